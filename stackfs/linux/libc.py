"""The one handle on the C library, and the few calls Python's ``os`` module does not offer.

The backends' store is reached through ``O_PATH`` file descriptors (one per inode the kernel
knows), as libfuse's passthrough_ll does. ``os`` cannot operate on such a descriptor itself for
some calls (``fchown``/``futimens`` refuse O_PATH descriptors), nor pass the kernel's rename
flags; these wrappers call ``renameat2``, ``fchownat``, ``utimensat`` and ``linkat`` with
``AT_EMPTY_PATH``. The union's branches call ``renameat2`` for RENAME_NOREPLACE /
RENAME_EXCHANGE and ``openat2`` (RESOLVE_BENEATH) for paths read from metadata; the lifecycle
detaches with ``umount2(MNT_DETACH)``; a daemon names its worker threads with
``prctl(PR_SET_NAME)``. Every wrapper raises :class:`OSError` with the errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MNT_DETACH = 2
PR_SET_NAME = 15

LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc = LIBC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.fchownat.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_int,
]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret: int, what: str, name: bytes | None = None) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        if name is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", os.fsdecode(name))
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int = 0) -> None:
    """``renameat2(2)``: rename with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    _check(_libc.renameat2(olddirfd, old, newdirfd, new, flags), "renameat2", old)


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """``fchownat(fd, "", uid, gid, AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW)``: works on O_PATH fds and
    on symlinks themselves. ``-1`` leaves an id unchanged."""
    _check(
        _libc.fchownat(
            fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW
        ),
        "fchownat",
    )


def fchownat(dirfd: int, name: bytes, uid: int, gid: int) -> None:
    """``fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)``."""
    _check(
        _libc.fchownat(dirfd, name, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_SYMLINK_NOFOLLOW),
        "fchownat",
        name,
    )


def utimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """``utimensat(fd, "", times, AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW)`` with nanoseconds;
    ``None`` leaves that time alone (``UTIME_OMIT``)."""
    times = (_Timespec * 2)()
    for i, ns in enumerate((atime_ns, mtime_ns)):
        if ns is None:
            times[i].tv_sec, times[i].tv_nsec = 0, UTIME_OMIT
        else:
            times[i].tv_sec, times[i].tv_nsec = divmod(ns, 1_000_000_000)
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "utimensat")


def link_empty(fd: int, newdirfd: int, name: bytes) -> None:
    """``linkat(fd, "", newdirfd, name, AT_EMPTY_PATH)``: a new name for the object behind an
    O_PATH fd. Before Linux 6.10 AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH and fails with ENOENT
    without it (the daemon runs as root; the in-process tests run as nobody, and 6.1 is Debian
    12's kernel): then the same link through ``/proc/self/fd/N`` with AT_SYMLINK_FOLLOW, which
    any caller may make (open(2) on O_TMPFILE). A file with no name left is ENOENT either way."""
    if _libc.linkat(fd, b"", newdirfd, name, AT_EMPTY_PATH) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.ENOENT:
        raise OSError(err, f"linkat: {os.strerror(err)}", os.fsdecode(name))
    os.link(b"/proc/self/fd/%d" % fd, name, dst_dir_fd=newdirfd, follow_symlinks=True)


def umount2(target: bytes, flags: int) -> None:
    """``umount2(2)`` (``MNT_DETACH``: lazy; the mount point is free at once)."""
    _check(_libc.umount2(target, flags), "umount2", target)


def set_thread_name(name: bytes) -> None:
    """``prctl(PR_SET_NAME)``: the calling thread's comm (15 bytes kept)."""
    _check(_libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0), "prctl")


RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: the openat2 syscall number (the generic table's: the same on x86_64 and aarch64)
SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)`` (glibc has no wrapper): open ``path`` relative to ``dirfd`` under the
    ``RESOLVE_*`` restrictions (``RESOLVE_BENEATH``: ``..`` or an absolute path or symlink
    never leaves ``dirfd`` (EXDEV); ``RESOLVE_NO_SYMLINKS``: no symlink is followed (ELOOP),
    a trailing one is opened itself with ``O_PATH|O_NOFOLLOW``). Returns the new fd."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2: {os.strerror(err)}", os.fsdecode(path))
    return int(fd)


MS_BIND = 4096
PR_SET_PDEATHSIG = 1
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]


def bind_mount(source: bytes, target: bytes) -> None:
    """``mount(source, target, NULL, MS_BIND, NULL)``: what the automount daemon does for a
    map entry that is a directory (seed 001)."""
    _check(_libc.mount(source, target, None, MS_BIND, None), "mount", target)


def set_pdeathsig(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG)``: get ``sig`` when the parent thread exits (a helper daemon
    never outlives the daemon that started it, even after a SIGKILL)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0), "prctl")
