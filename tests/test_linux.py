"""The one Linux layer (stackfs/linux/): the syscall table, /proc reads, the libc calls."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time

import pytest

from stackfs.linux import libc, proc, syscalls


def test_one_table_for_both_architectures() -> None:
    assert syscalls.name_of(316, "x86_64") == syscalls.name_of(276, "aarch64") == "renameat2"
    assert syscalls.name_of(257, "x86_64") == syscalls.name_of(56, "aarch64") == "openat"
    assert syscalls.name_of(79, "aarch64") == "newfstatat"
    assert syscalls.name_of(9999, "aarch64") == "syscall_9999"
    assert syscalls.file_args("renameat2") == [("path", 1, 0), ("path", 3, 2)]
    assert syscalls.file_args("read") == [("fd", 0)]
    for arch, table in syscalls.NUMBERS.items():
        assert all(name in syscalls.FILE_ARGS for name in table.values()), arch


def test_read_cstring_of_a_process() -> None:
    buf = ctypes.create_string_buffer(b"/some/path\0after")
    assert proc.read_cstring(os.getpid(), ctypes.addressof(buf)) == b"/some/path"
    assert proc.read_cstring(os.getpid(), 0) is None
    assert proc.read_mem(os.getpid(), ctypes.addressof(buf), 5) == b"/some"


def test_alive_and_comm() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert proc.alive(child.pid)
        assert proc.comm_of(child.pid) is not None
        child.kill()
        deadline = time.monotonic() + 5
        while proc.alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not proc.alive(child.pid)  # a zombie (not reaped yet) is not alive
    finally:
        child.wait()
    assert not proc.alive(child.pid)


def test_syscall_of_a_blocked_task() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import os; os.read(0, 1)"], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 5
        call = None
        while time.monotonic() < deadline:
            call = proc.syscall_of(child.pid)
            if call is not None and syscalls.name_of(call[0]) == "read":
                break
            time.sleep(0.02)
        assert call is not None and syscalls.name_of(call[0]) == "read", call
        assert call[1][0] == 0  # fd 0
    finally:
        child.kill()
        child.wait()
    assert proc.parse_syscall("running") is None
    assert proc.parse_syscall("-1 0x7ffd 0x7f00") is None


_SPIN_THEN_READ = """
import os, sys
go = int(sys.argv[1])
os.set_blocking(go, False)
os.write(1, b"spinning\\n")
while True:
    try:
        if os.read(go, 1):
            break
    except BlockingIOError:
        pass
os.read(0, 1)
"""


def test_settled_syscall_text_waits_for_the_task_to_sleep() -> None:
    """A task that is not asleep shows ``running`` (the kernel's task_current_syscall): the
    settled read waits until it sleeps in its next syscall, as a FUSE requester does on its way
    into request_wait_answer (seen on a slow guest: LOOKUP read as a plain walk)."""
    go_r, go_w = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", _SPIN_THEN_READ, str(go_r)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(go_r,),
    )
    os.close(go_r)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"spinning\n"
        assert proc.syscall_text(child.pid) == "running"
        assert proc.settled_syscall_text(child.pid, bound=0) == "running"
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(proc.settled_syscall_text(child.pid, bound=60))
        )
        reader.start()
        os.write(go_w, b"g")  # the child leaves its loop and sleeps in read(0)
        reader.join(timeout=90)
        call = proc.parse_syscall(result[0])
        assert call is not None and syscalls.name_of(call[0]) == "read", result
    finally:
        os.close(go_w)
        child.kill()
        child.wait()


def test_renameat2_flags(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(OSError) as ei:
        libc.renameat2(
            libc.AT_FDCWD, os.fsencode(a), libc.AT_FDCWD, os.fsencode(b), libc.RENAME_NOREPLACE
        )
    assert ei.value.errno == errno.EEXIST
    libc.renameat2(
        libc.AT_FDCWD, os.fsencode(a), libc.AT_FDCWD, os.fsencode(b), libc.RENAME_EXCHANGE
    )
    assert (a.read_text(), b.read_text()) == ("B", "A")


def test_descendants_reads_the_tree_children_of_children_included():
    sh = subprocess.Popen(["sh", "-c", "sh -c 'sleep 30; :' & sleep 30 & wait"])
    try:
        want = ["sh", "sleep", "sleep"]  # the inner sh and its sleep, the outer sleep

        def comms() -> list[str]:
            return sorted(proc.comm_of(p) or "" for p in proc.descendants(sh.pid))

        deadline = time.monotonic() + 5
        while comms() != want and time.monotonic() < deadline:
            time.sleep(0.01)  # the forks and execs are under way
        assert comms() == want
        assert proc.descendants(2**22 + 7) == set()  # no such process
    finally:
        for p in proc.descendants(sh.pid):
            os.kill(p, 9)
        sh.kill()
        sh.wait()
