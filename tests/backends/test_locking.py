"""Cross-layer locking through ``trusted.stackfs.i_rwsem`` on a backend, with real processes.

A layer above takes a lower file's modelled i_rwsem with setxattr and releases it with
removexattr (docs/ARCHITECTURE.md); the owner is the calling thread. Under contention the
getxattr forms (``.write``/``.read``/``.unlock``) are needed: the VFS holds the real inode lock
around setxattr and removexattr, so a waiter in setxattr would block the holder's removexattr
(see backends/base.py). Also: ``panic_on_oops``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from stackfs.runtime import lifecycle

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

LOCK = "trusted.stackfs.i_rwsem"

#: a process that runs lock commands read from stdin ("lock PATH MODE" / "unlock PATH")
LOCKER = rf"""
import os, sys
print("ready", flush=True)
for line in sys.stdin:
    cmd, path, *mode = line.split()
    try:
        if cmd == "lock":  # the documented form
            os.setxattr(path, {LOCK!r}, mode[0].encode())
        elif cmd == "unlock":
            os.removexattr(path, {LOCK!r})
        elif cmd == "take":  # the contention-safe forms
            assert os.getxattr(path, {LOCK!r} + "." + mode[0]) == mode[0].encode()
        elif cmd == "release":
            os.getxattr(path, {LOCK!r} + ".unlock")
        print("ok", flush=True)
    except OSError as e:
        print(e.errno, flush=True)
"""


class Locker:
    def __init__(self, cwd, reaper: list) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER], cwd=cwd, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        reaper.append(self.proc)
        assert self.proc.stdout.readline().strip() == "ready"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self) -> str:
        return self.proc.stdout.readline().strip()

    def do(self, line: str) -> str:
        self.send(line)
        return self.answer()

    def exit(self) -> None:
        """End the process (it holds no lock that anyone waits for)."""
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _locks(m: lifecycle.Mount) -> list[dict]:
    return m.control({"op": "state"})["locks"]


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_lock_xattr_semantics(mount_backend, reaper):
    m = mount_backend("passthrough")
    for name in ("a", "b"):
        (m.mountpoint / name).write_text(name)
    one, two, three = (Locker(m.mountpoint, reaper) for _ in range(3))
    assert one.do("lock a read") == "ok"
    assert two.do("lock a read") == "ok"  # shared
    [lock] = _locks(m)
    assert {h["task"]["pid"] for h in lock["holders"]} == {one.proc.pid, two.proc.pid}
    assert one.do("unlock a") == "ok"
    assert two.do("unlock a") == "ok"
    assert _locks(m) == []
    assert three.do("unlock a") == str(errno.ENODATA)  # not held: nothing to remove
    # contention, with the getxattr forms
    assert one.do("take a write") == "ok"
    assert one.do("take a write") == "ok"  # already held: no second hold
    two.send("take a write")  # waits: the FUSE GETXATTR is not answered
    [lock] = _wait(lambda: [lk for lk in _locks(m) if lk["waiters"]])
    assert [h["task"]["pid"] for h in lock["holders"]] == [one.proc.pid]
    assert lock["waiters"][0]["task"]["pid"] == two.proc.pid
    assert lock["waiters"][0]["chain"] == ["sys_getxattr", "vfs_getxattr", "inode_lock"]
    assert three.do("release a") == "ok"  # not its lock: nothing happens
    assert one.do("release a") == "ok"
    assert two.answer() == "ok"  # granted
    assert two.do("release a") == "ok"
    assert one.do("lock a sideways") == str(errno.EINVAL)
    with pytest.raises(OSError) as exc:
        os.setxattr(m.mountpoint / "a", "trusted.stackfs.other", b"x")
    assert exc.value.errno == errno.EOPNOTSUPP
    # a holder that exits does not leak the lock
    assert one.do("lock b write") == "ok"
    one.exit()
    assert two.do("lock b write") == "ok"
    assert two.do("unlock b") == "ok"
    assert _locks(m) == []


def test_lock_order_inversion_is_reported_without_a_deadlock(mount_backend, reaper):
    """A then B in one process, B then A in another, one after the other: no deadlock, and
    lockdep reports the inversion with both tasks."""
    m = mount_backend("passthrough")
    for name in ("a", "b"):
        (m.mountpoint / name).write_text(name)
    one, two = Locker(m.mountpoint, reaper), Locker(m.mountpoint, reaper)
    for line in ("lock a write", "lock b write", "unlock b", "unlock a"):
        assert one.do(line) == "ok"
    for line in ("lock b write", "lock a write", "unlock a", "unlock b"):
        assert two.do(line) == "ok"
    state = m.control({"op": "state"})
    [event] = [e for e in state["events"] if e["type"] == "lock_inversion"]
    assert {t["pid"] for t in event["tasks"]} == {one.proc.pid, two.proc.pid}
    orders = {(o["first"], o["then"]) for o in state["lock_order"]}
    ino_a, ino_b = (os.stat(m.mountpoint / n).st_ino for n in ("a", "b"))
    assert (f"i_rwsem ino:{ino_a}", f"i_rwsem ino:{ino_b}") in orders
    assert (f"i_rwsem ino:{ino_b}", f"i_rwsem ino:{ino_a}") in orders


def test_panic_on_oops_stops_serving_but_answers_state(mount_backend, stack, reaper):
    m = mount_backend("nfs", "--variant", "buggy", "-o", "panic_on_oops")
    (m.mountpoint / "p").mkdir()
    with pytest.raises(FileNotFoundError):
        os.stat(m.mountpoint / "p" / "d")
    m.control({"op": "server", "action": "mkdir", "args": ["p/d"]})
    os.listdir(m.mountpoint / "p")
    cat = subprocess.Popen(["cat", "p/d"], cwd=m.mountpoint, stderr=subprocess.PIPE)
    reaper.append(cat)
    try:
        events = _wait(lambda: [e for e in m.control({"op": "state"})["events"]
                                if e["type"] == "oops"])
        assert events[0]["tasks"][0]["pid"] == cat.pid
        time.sleep(0.3)
        assert cat.poll() is None  # the kernel "panicked": its request is never answered
        assert m.waiting()
    finally:
        lifecycle.unmount(m, timeout=5)
        stack.mounts.remove(m)
        cat.wait(timeout=10)
    assert not os.path.ismount(m.mountpoint)
