"""The one Linux layer (stackfs/linux/): the syscall table, /proc reads, the libc calls."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
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
