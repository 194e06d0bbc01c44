"""What the task behind a FUSE LOOKUP is doing: its system call, read from /proc.

A FUSE LOOKUP does not carry the kernel's ``LOOKUP_OPEN`` intent, but the calling task is blocked
in its system call while the daemon answers, so ``/proc/TID/syscall`` (number and arguments) and
``/proc/TID/mem`` (the pathname argument) tell what it is: an ``open(2)`` whose last component is
being looked up (the kernel's ``lookup_open``, where NFS's ``->atomic_open`` runs), or a plain
path walk (``stat(2)``, an intermediate component, ...). The daemon runs as root, which may read
both. Anything unreadable counts as a plain lookup.
"""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")

#: (syscall number -> (name, index of the path argument, index of the flags argument or
#: None, fixed flags)) for the calls whose last component the VFS opens.
_OPEN_CALLS: dict[str, dict[int, tuple[str, int, int | None, int]]] = {
    "x86_64": {
        2: ("open", 0, 1, 0),
        257: ("openat", 1, 2, 0),
        437: ("openat2", 1, -1, 0),  # flags: first u64 of struct open_how (argument 2)
        85: ("creat", 0, None, os.O_CREAT | os.O_WRONLY | os.O_TRUNC),
    },
    "aarch64": {
        56: ("openat", 1, 2, 0),
        437: ("openat2", 1, -1, 0),
    },
}
_NAMES: dict[str, dict[int, str]] = {
    "x86_64": {4: "newstat", 6: "newlstat", 262: "newfstatat", 332: "statx", 21: "access",
               269: "faccessat", 439: "faccessat2", 59: "execve", 80: "chdir", 89: "readlink",
               267: "readlinkat", 191: "getxattr", 192: "lgetxattr", 83: "mkdir",
               258: "mkdirat", 87: "unlink", 263: "unlinkat", 82: "rename", 264: "renameat",
               316: "renameat2"},
    "aarch64": {79: "newfstatat", 291: "statx", 48: "faccessat", 221: "execve", 34: "mkdirat",
                35: "unlinkat", 38: "renameat", 276: "renameat2"},
}
_ARCH = platform.machine()


@dataclass(frozen=True)
class Intent:
    """The system call of a task blocked in a LOOKUP."""

    syscall: str  # "openat", "newstat", "syscall_N", or "" (unknown)
    raw: str  # /proc/TID/syscall as read ("" if unreadable)
    path: bytes | None = None  # the pathname argument, if read
    open: bool = False  # an open(2) family call, and ``name`` is its last component
    flags: int = 0  # its open flags

    def chain(self) -> tuple[str, ...]:
        """The model call chain of the syscall down to the path walk (seed 003's names)."""
        if self.open:
            return ("entry_SYSCALL_64_fastpath", "sys_open", "do_sys_open", "do_filp_open",
                    "path_openat")
        if self.syscall.startswith("open") or self.syscall == "creat":
            return ("entry_SYSCALL_64_fastpath", "sys_open", "do_sys_open", "do_filp_open",
                    "path_openat", "link_path_walk")
        name = self.syscall or "unknown"
        return ("entry_SYSCALL_64_fastpath", f"sys_{name}", "filename_lookup", "path_lookupat")


def _read_mem(tid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def read_cstring(tid: int, addr: int, limit: int = 4096) -> bytes | None:
    """The NUL-terminated string at ``addr`` in task ``tid``'s memory (page by page)."""
    out = b""
    try:
        while len(out) < limit:
            chunk = min(_PAGE - (addr % _PAGE), limit - len(out))
            data = _read_mem(tid, addr, chunk)
            if not data:
                return None
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            addr += len(data)
    except (OSError, OverflowError, ValueError):
        return None
    return None


def syscall_intent(tid: int, name: bytes) -> Intent:
    """What task ``tid`` (blocked in a LOOKUP of ``name``) is doing."""
    try:
        with open(f"/proc/{tid}/syscall", "rb") as f:
            raw = f.read().decode("ascii", "replace").strip()
    except OSError:
        return Intent("", "")
    fields = raw.split()
    if not fields or not fields[0].lstrip("-").isdigit():
        return Intent("", raw)
    nr = int(fields[0])
    try:
        args = [int(a, 16) for a in fields[1:7]]
    except ValueError:
        return Intent("", raw)
    call = _OPEN_CALLS.get(_ARCH, {}).get(nr)
    if call is None or len(args) < 6:
        return Intent(_NAMES.get(_ARCH, {}).get(nr, f"syscall_{nr}"), raw)
    sysname, path_arg, flags_arg, fixed = call
    path = read_cstring(tid, args[path_arg])
    if flags_arg is None:
        flags = fixed
    elif flags_arg == -1:
        try:
            flags = struct.unpack("=Q", _read_mem(tid, args[2], 8))[0]
        except (OSError, struct.error, OverflowError):
            flags = 0
    else:
        flags = args[flags_arg] & 0xFFFFFFFF
    last = path.rstrip(b"/").rsplit(b"/", 1)[-1] if path else None
    return Intent(sysname, raw, path, open=last == name, flags=flags)
