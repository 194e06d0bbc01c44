"""Small things a user trips on (issue 26 item 6), on real mounts: an error names the path and
the operation, a detached mount leaves no empty log behind, ``testfs`` ends with one clear line
after its connection is aborted."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from stackfs.runtime import fusectl, lifecycle, mountinfo
from stackfs.runtime.service import timeout_factor

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def stackfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lifecycle.stackfs_argv(*args), capture_output=True, text=True, timeout=60)


def test_server_errors_name_the_mount_the_operation_and_the_path(stack, tmp_path):
    store, mp = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mp.mkdir()
    stack.mount(
        lifecycle.stackfs_argv("backend", "mount", "afs", "--store", str(store), "-f", str(mp)), mp
    )
    res = stackfs("server", str(mp), "write", "dir/file", "new data")
    assert res.returncode == 1
    assert res.stderr == f"stackfs: {mp}: server write dir/file: No such file or directory\n"
    res = stackfs("server", str(mp), "rename", "old", "new")
    assert res.stderr == f"stackfs: {mp}: server rename old new: No such file or directory\n"
    assert stackfs("server", str(mp), "write", "file", "x").returncode == 0


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout * timeout_factor()
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} did not exit"


def test_a_detached_mount_leaves_no_empty_log_behind(tmp_path):
    store, mp = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mp.mkdir()
    res = stackfs("backend", "mount", "passthrough", "--store", str(store), str(mp))
    assert res.returncode == 0, res.stderr
    log = Path(res.stdout.rsplit(" log ", 1)[1].strip())
    pid = int(res.stdout.split("daemon ", 1)[1].split(",", 1)[0])
    try:
        assert log.exists() and log.name.startswith("stackfs-daemon-")  # while it runs
    finally:
        subprocess.run(["umount", str(mp)], check=False, timeout=30)
    _wait_gone(pid)
    assert not log.exists(), "the daemon left its empty log behind"


def test_a_log_with_something_in_it_stays(tmp_path):
    """A daemon that had something to say keeps its log (here: the abort's line)."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    res = stackfs("backend", "mount", "passthrough", "--store", str(tmp_path), str(mp))
    assert res.returncode == 0, res.stderr
    log = Path(res.stdout.rsplit(" log ", 1)[1].strip())
    pid = int(res.stdout.split("daemon ", 1)[1].split(",", 1)[0])
    try:
        entry = mountinfo.find(mp)
        assert entry is not None and fusectl.abort(entry.conn)
        _wait_gone(pid)  # it reads ENODEV and exits: the mount is still there
    finally:
        lifecycle.lazy_detach(mp)
    try:
        assert "was aborted" in log.read_text()
    finally:
        log.unlink(missing_ok=True)


def test_testfs_ends_with_one_clear_line_after_an_abort(stack, tmp_path):
    """README: `stackfs testfs lookup-mkdir` deadlocks a stat for real and `stackfs watch
    --abort` recovers; the daemon then ends with a line that says so, not with a traceback of
    its helper's mkdir (ENOTCONN once the connection is aborted)."""
    mp = tmp_path / "m"
    mp.mkdir()
    log = tmp_path / "testfs.log"
    m = stack.mount(lifecycle.stackfs_argv("testfs", "lookup-mkdir", str(mp)), mp, log=log)
    stat = subprocess.Popen(
        ["stat", str(mp / "trigger")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        res = stackfs("watch", str(mp), "--abort", "--count", "1", "--no-picture")
        assert res.returncode == 1 and "recovery: complete" in res.stdout, res.stdout
        assert m.proc is not None
        m.proc.wait(timeout=10 * timeout_factor())
    finally:
        stat.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            stat.wait(timeout=10)
    stack.mounts.remove(m)
    text = log.read_text()
    assert "Traceback" not in text and "Exception" not in text, text
    assert "stackfs: the FUSE connection " in text and f"of {mp.resolve()} was aborted" in text
