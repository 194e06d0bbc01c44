"""Seed 000 on the buggy AFS backend: the recursive i_rwsem, seen by the watchdog.

A process takes the AFS inode's modelled i_rwsem through the xattr (as aufs copy-up locks the
lower inode) and then opens the file: AFS ``afs_linux_open`` -> ``osi_VM_FlushPages`` ->
``afs_linux_lock_inode`` wants the same lock. The watchdog must report the hung task, the
one-task cycle (task -> FUSE open -> i_rwsem -> the same task) in lockdep's recursive form, and
the model's own ``recursive_locking`` event, then recover.
"""

from __future__ import annotations

import sys

import pytest

from stackfs.runtime import lifecycle
from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import Watchdog

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]

LOCK = "trusted.stackfs.i_rwsem"
LOCK_THEN_OPEN = f"""
import os
os.setxattr("f", {LOCK!r}, b"write")
print("locked", flush=True)
with open("f", "rb") as fh:
    fh.read()
"""


def test_recursive_lock_in_buggy_afs(stack, tmp_path, nothing_left, workload):
    store, mp = tmp_path / "store", tmp_path / "afs"
    store.mkdir()
    mp.mkdir()
    (store / "f").write_bytes(b"contents")
    m = stack.mount(lifecycle.stackfs_argv("backend", "mount", "afs", "--store", str(store),
                                           "--variant", "buggy", "-f", str(mp)), mp)
    wd = Watchdog([mp], threshold=1.0, abort=True, report_dir=tmp_path / "report")
    proc = workload([sys.executable, "-c", LOCK_THEN_OPEN], cwd=mp)
    assert proc.stdout.readline().strip() == b"locked"
    report = wd.run(timeout=15 * timeout_factor())
    (tmp_path / "report.txt").write_text(report.text())
    assert report.verdict == "deadlock", report.text()
    cycle = report.cycle
    assert cycle.kind == "recursive_locking" and cycle.tasks == [proc.pid]
    [seg] = cycle.segments
    assert seg.wait_at == "afs_linux_lock_inode" and seg.hold_at == "inode_lock"
    assert [e.type for e in report.events] == ["recursive_locking"]
    text = report.text()
    # the opener sleeps in request_wait_answer's interruptible wait (state S): the testbed's
    # block, not the kernel's hung-task format
    assert "task python" in text
    assert f":{proc.pid} blocked in an interruptible FUSE wait for " in text
    assert "WARNING: possible recursive locking detected" in text
    assert "osi_VM_FlushPages" in text and "fuse_open" in text
    assert " May be due to missing lock nesting notation" in text
    assert report.recovery is not None and report.recovery.ok, report.recovery.render()
    assert proc.wait(timeout=5) != 0
    nothing_left(m, [proc.pid])
