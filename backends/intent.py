"""What the task behind a FUSE LOOKUP is doing: its system call, read from /proc.

A FUSE LOOKUP does not carry the kernel's ``LOOKUP_OPEN`` intent, but the calling task is blocked
in its system call while the daemon answers, so ``/proc/TID/syscall`` (number and arguments) and
``/proc/TID/mem`` (the pathname argument) tell what it is: an ``open(2)`` whose last component is
being looked up (the kernel's ``lookup_open``, where NFS's ``->atomic_open`` runs), or a plain
path walk (``stat(2)``, an intermediate component, ...). The daemon runs as root, which may read
both. The task may not be asleep yet when the daemon reads the request (slow machines): the
read waits for it (:func:`stackfs.linux.proc.settled_syscall_text`). Anything unreadable counts
as a plain lookup.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from stackfs.linux import proc, syscalls

#: open(2)-family calls whose last component the VFS opens: name -> (index of the path
#: argument, index of the flags argument or None, fixed flags). ``openat2``'s flags are the first
#: u64 of its ``struct open_how`` (argument 2), marked -1.
_OPEN_CALLS: dict[str, tuple[int, int | None, int]] = {
    "open": (0, 1, 0),
    "openat": (1, 2, 0),
    "openat2": (1, -1, 0),
    "creat": (0, None, os.O_CREAT | os.O_WRONLY | os.O_TRUNC),
}
#: the kernel's own entry names where they differ from the syscall's (``stat`` is
#: ``sys_newstat``)
_KERNEL_NAMES = {"stat": "newstat", "lstat": "newlstat", "fstat": "newfstat"}


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
            return (
                "entry_SYSCALL_64_fastpath",
                "sys_open",
                "do_sys_open",
                "do_filp_open",
                "path_openat",
            )
        if self.syscall.startswith("open") or self.syscall == "creat":
            return (
                "entry_SYSCALL_64_fastpath",
                "sys_open",
                "do_sys_open",
                "do_filp_open",
                "path_openat",
                "link_path_walk",
            )
        name = self.syscall or "unknown"
        return ("entry_SYSCALL_64_fastpath", f"sys_{name}", "filename_lookup", "path_lookupat")


def syscall_intent(tid: int, name: bytes) -> Intent:
    """What task ``tid`` (blocked in a LOOKUP of ``name``) is doing."""
    raw = proc.settled_syscall_text(tid)
    if not raw:
        return Intent("", "")
    call = proc.parse_syscall(raw)
    if call is None:
        return Intent("", raw)
    nr, args = call
    sysname = syscalls.name_of(nr)
    spec = _OPEN_CALLS.get(sysname)
    if spec is None or len(args) < 6:
        return Intent(_KERNEL_NAMES.get(sysname, sysname), raw)
    path_arg, flags_arg, fixed = spec
    path = proc.read_cstring(tid, args[path_arg])
    if flags_arg is None:
        flags = fixed
    elif flags_arg == -1:
        how = proc.read_mem(tid, args[2], 8)
        flags = struct.unpack("=Q", how)[0] if how is not None else 0
    else:
        flags = args[flags_arg] & 0xFFFFFFFF
    last = path.rstrip(b"/").rsplit(b"/", 1)[-1] if path else None
    return Intent(sysname, raw, path, open=last == name, flags=flags)
