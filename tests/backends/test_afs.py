"""The AFS personality (seed 000) on real mounts, with real processes.

* Another client's data is seen at the next open although the kernel had the old pages cached
  (keep_cache on), and by a descriptor opened before the change; the open flushes the pages
  mapped at the old version. An open file's size and data come from one version.
* ``buggy``: a process that locks a file through the xattr (as aufs copy-up locks the lower
  inode) and then opens it is stuck in the kernel, in the FUSE wait under fuse_open, and the
  state shows the recursive lock with holder and waiter. ``fixed``: the same sequence completes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackfs.runtime import control, lifecycle

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

LOCK = "trusted.stackfs.i_rwsem"

#: lock the file through the xattr, then open and read it (aufs copy-up order); relative paths
#: because /tmp/pytest-of-root is not searchable for everyone (cwd is the mount point)
LOCK_THEN_OPEN = f"""
import os, sys
os.setxattr("f", {LOCK!r}, b"write")
print("locked", flush=True)
with open("f", "rb") as fh:
    data = fh.read()
os.removexattr("f", {LOCK!r})
print("read", data.decode(), flush=True)
"""


def _server(m: lifecycle.Mount, action: str, *args: str) -> str:
    return control.query(m.mountpoint, {"op": "server", "action": action, "args": list(args)})[
        "message"
    ]


def _stats(m: lifecycle.Mount) -> dict[str, int]:
    return m.control({"op": "state"})["daemon"]["stats"]


@pytest.mark.parametrize("variant", ["buggy", "fixed"])
def test_other_clients_data_is_seen_at_next_open(mount_backend, tmp_path, variant):
    store = tmp_path / "b-store"
    store.mkdir()
    (store / "f").write_bytes(b"old data")
    m = mount_backend("afs", "--variant", variant)
    f = m.mountpoint / "f"
    fd1 = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(fd1, 100, 0) == b"old data"
        assert "write /f" in _server(m, "write", "f", "NEW data")  # same size
        assert (store / "f").read_bytes() == b"NEW data"
        before = _stats(m)
        # the file opened before the change reads the new version too: the callback break
        # made the status stale, the kernel asks for it (GETATTR: FetchStatus) and, the mtime
        # having moved, drops its pages (FUSE auto_inval_data), and the read path fetches the
        # data again (afs_linux_read_iter -> afs_GenericRead -> afs_GetDCache)
        assert os.pread(fd1, 100, 0) == b"NEW data"
        assert f.read_bytes() == b"NEW data"  # the next open sees the new data version
        after = _stats(m)
        # ... and afs_open flushed the pages mapped at the old version (mapDV)
        assert os.pread(fd1, 100, 0) == b"NEW data"
    finally:
        os.close(fd1)
    key = "flush_in_open" if variant == "buggy" else "flush_after_reply"
    assert after.get(key, 0) == before.get(key, 0) + 1
    assert after.get("fetch_status", 0) == before.get("fetch_status", 0) + 1  # callback broken
    # opening again without a change on the server flushes nothing
    assert f.read_bytes() == b"NEW data"
    assert _stats(m).get(key, 0) == after[key]


def test_writes_go_back_to_the_server_on_fsync_and_close(mount_backend, tmp_path):
    store = tmp_path / "b-store"
    store.mkdir()
    (store / "f").write_bytes(b"original")
    m = mount_backend("afs", "--variant", "fixed")
    fd = os.open(m.mountpoint / "f", os.O_RDWR | os.O_TRUNC)
    try:
        os.write(fd, b"first")
        assert (store / "f").read_bytes() == b"original"  # still only in the cache manager
        assert os.stat(m.mountpoint / "f").st_size == 5
        os.fsync(fd)
        assert (store / "f").read_bytes() == b"first"
        os.write(fd, b"+second")
        assert (store / "f").read_bytes() == b"first"
    finally:
        os.close(fd)
    assert (store / "f").read_bytes() == b"first+second"
    (m.mountpoint / "new").write_bytes(b"created")
    assert (store / "new").read_bytes() == b"created"
    os.truncate(m.mountpoint / "new", 3)
    assert (store / "new").read_bytes() == b"cre"
    assert _stats(m)["store_data"] >= 3


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _kernel_stack(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return ""


def test_buggy_lock_then_open_is_stuck_with_the_recursive_lock(
    mount_backend, stack, reaper, tmp_path
):
    store = tmp_path / "b-store"
    store.mkdir()
    (store / "f").write_bytes(b"contents")
    m = mount_backend("afs", "--variant", "buggy")
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_THEN_OPEN],
        cwd=m.mountpoint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper.append(proc)
    try:
        assert proc.stdout.readline().strip() == "locked"

        def stuck() -> dict | None:
            for lock in m.control({"op": "state"})["locks"]:
                if lock["waiters"]:
                    return lock
            return None

        lock = _wait_for(stuck, what="the open to wait for the inode lock")
        assert proc.poll() is None
        # the process is blocked in the kernel, waiting for the FUSE daemon's OPEN answer
        kstack = _wait_for(
            lambda: "request_wait_answer" in _kernel_stack(proc.pid) and _kernel_stack(proc.pid),
            what="the FUSE wait in /proc/PID/stack",
        )
        assert "fuse_open" in kstack or "fuse_do_open" in kstack or "fuse_send_open" in kstack

        # `stackfs state` shows the lock, its holder and its waiter: the same task
        res = subprocess.run(
            lifecycle.stackfs_argv("state", str(m.mountpoint)),
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert res.returncode == 0, res.stderr
        state = json.loads(res.stdout)
        [lock] = [lk for lk in state["locks"] if lk["waiters"]]
        assert lock["desc"].startswith("/f (ino ")
        [holder] = lock["holders"]
        [waiter] = lock["waiters"]
        assert holder["task"]["pid"] == waiter["task"]["pid"] == proc.pid
        assert holder["mode"] == waiter["mode"] == "write"
        assert holder["chain"][-1] == "inode_lock"
        assert waiter["chain"][-4:] == [
            "afs_open",
            "osi_FlushPages",
            "osi_VM_FlushPages",
            "afs_linux_lock_inode",
        ]
        assert "afs_linux_open" in waiter["chain"]
        [event] = [e for e in state["events"] if e["type"] == "recursive_locking"]
        assert event["tasks"][0]["pid"] == proc.pid
        assert "wait forever" in event["summary"]
        [req] = [r for r in state["inflight"] if r["op"] == "open"]
        assert req["task"]["pid"] == proc.pid
        time.sleep(0.3)
        assert proc.poll() is None, f"the open must stay stuck: {proc.communicate()}"
    finally:
        report = lifecycle.unmount(m, timeout=5)  # aborts the hung connection
        stack.mounts.remove(m)  # down already: its connection number may be reused at once
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert report.aborted or not report.clean
    assert proc.returncode != 0  # its open failed when the connection was aborted
    assert not os.path.ismount(m.mountpoint)


def test_fixed_lock_then_open_completes(mount_backend, tmp_path):
    store = tmp_path / "b-store"
    store.mkdir()
    (store / "f").write_bytes(b"contents")
    m = mount_backend("afs", "--variant", "fixed")
    _server(m, "write", "f", "changed by another client")
    res = subprocess.run(
        [sys.executable, "-c", LOCK_THEN_OPEN],
        cwd=m.mountpoint,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["locked", "read changed by another client"]
    state = m.control({"op": "state"})
    assert state["locks"] == []
    assert not [e for e in state["events"] if e["type"] == "recursive_locking"]
    assert state["daemon"]["stats"]["flush_after_reply"] >= 1


@pytest.mark.parametrize("variant", ["buggy", "fixed"])
def test_size_and_data_of_an_open_file_come_from_one_version(mount_backend, tmp_path, variant):
    """Issue 22, finding 1 (what ``stackfs explore aufs-afs-copyup`` found): a file opened at
    data version 1, then rewritten longer by another client (the callback breaks), then
    stat'ed and read through the same descriptor, as a copy-up does. OpenAFS answers both from
    the vcache: ``afs_linux_getattr`` fetches the status (``afs_VerifyVCache``), and the read
    path fetches the chunk again when its version is not the status' DataVersion
    (``afs_GenericRead`` -> ``afs_GetDCache``, ``afs_IsDCacheFresh``). The model used to report
    the fileserver's new size with the cache's old data: v1 padded with zeros to v2's size."""
    v1, v2 = b"version 1\n", b"version 2, rewritten longer by another client\n"
    store = tmp_path / "b-store"
    store.mkdir()
    (store / "f").write_bytes(v1)
    m = mount_backend("afs", "--variant", variant)
    f = m.mountpoint / "f"
    assert f.read_bytes() == v1  # the kernel caches version 1's pages
    fd = os.open(f, os.O_RDONLY)  # afs_open: the cache holds version 1, no flush needed
    try:
        _server(m, "write", "f", v2.decode())  # data version 2, the callback breaks
        size = os.fstat(fd).st_size
        data = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    assert (size, data) == (len(v2), v2)
    assert f.read_bytes() == v2
