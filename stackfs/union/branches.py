"""The branch table: one open directory fd per branch and the ``*at()`` calls on it.

A path inside a branch is a tuple of name components (:data:`Path`), never a string that the
process resolves from ``/``: every call goes through the branch's root fd (``openat``,
``fstatat``, ``mkdirat``, ``renameat2``, ...). A path longer than :data:`SHORT` bytes is walked
in pieces with ``O_PATH`` directory fds, so trees deeper than PATH_MAX work and errors keep their
errno (this is what aufs gets for free from holding the branch dentries; ``vfs_path_lookup``).

Each branch knows at mount time whether it lives on a FUSE mount (``blocking``: a syscall on it
may wait for another daemon, so the union runs it in a worker thread through
:func:`stackfs.runtime.daemon.in_worker`) and whether that mount is a stackfs daemon (``stackfs``:
it
understands the cross-layer ``trusted.stackfs.i_rwsem`` lock).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stackfs.linux import libc
from stackfs.runtime import mountinfo

T = TypeVar("T")

Path = tuple[bytes, ...]
#: paths up to this many bytes are passed to the *at() call in one piece
SHORT = 3072


def _mount_of(path: str) -> mountinfo.MountEntry | None:
    """The mount that holds ``path`` (matched by device number, no path walk)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    found = None
    for m in mountinfo.mounts():
        if m.major == major and m.minor == minor:
            found = m
    return found


@dataclass(eq=False)
class Branch:
    """One branch: its directory, permission, root fd and what kind of mount it is on."""

    index: int
    path: str
    writable: bool
    fd: int = -1
    blocking: bool = False
    stackfs: bool = False
    fstype: str = ""
    dev: int = 0
    extra_fds: list[int] = field(default_factory=list)
    #: (uid, gid) a file this process creates in the branch's temporary directory gets (the
    #: work directory, when that directory is not set-gid); None: unknown
    new_owner: tuple[int, int] | None = None
    #: the form of the whiteouts and opaque markers the union writes here: "aufs" (``.wh.*``
    #: files) or "overlay" (0/0 character devices, ``trusted.overlay.opaque``); both are read
    whiteout_style: str = "aufs"
    #: overlayfs' ``userxattr``: the overlayfs metadata here is ``user.overlay.*`` (else
    #: ``trusted.overlay.*``; :mod:`stackfs.union.whiteout` reads only the one namespace)
    userxattr: bool = False

    @classmethod
    def open_branch(cls, index: int, path: str, writable: bool) -> Branch:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        m = _mount_of(path)
        fstype = m.fstype if m is not None else ""
        return cls(
            index=index,
            path=path,
            writable=writable,
            fd=fd,
            blocking=bool(m is not None and m.is_fuse),
            stackfs=bool(m is not None and m.is_fuse and m.is_testbed),
            fstype=fstype,
            dev=st.st_dev,
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "perm": "rw" if self.writable else "ro",
            "fstype": self.fstype,
            "blocking": self.blocking,
            "stackfs": self.stackfs,
        }

    # -- path resolution -------------------------------------------------------------------------

    def at(self, path: Path, beneath: bool = False) -> tuple[int, bytes, int]:
        """``(dirfd, name, fd_to_close)`` for ``path``: the last part relative to a directory fd.

        ``fd_to_close`` is -1 unless a deep path had to be walked with O_PATH fds (``beneath``:
        walked with :func:`_open_beneath`, no symlink followed).
        """
        if not path:
            return self.fd, b".", -1
        if len(path) == 1:
            return self.fd, path[0], -1
        total = 0
        for c in path:
            total += len(c) + 1
        if total < SHORT:
            return self.fd, b"/".join(path), -1
        dfd, close = self.fd, -1
        start = 0
        while total >= SHORT:
            j, size = start, 0
            while j < len(path) - 1 and (j == start or size + len(path[j]) + 1 < SHORT // 2):
                size += len(path[j]) + 1
                j += 1
            piece = b"/".join(path[start:j])
            try:
                if beneath:
                    nfd = _open_beneath(dfd, piece, os.O_PATH | os.O_DIRECTORY)
                else:
                    nfd = os.open(piece, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            finally:
                if close >= 0:
                    os.close(close)
            dfd = close = nfd
            total -= size
            start = j
        return dfd, b"/".join(path[start:]), close

    def proc_path(self, path: Path) -> tuple[str, int]:
        """A path string for calls that have no *at() form (xattrs): /proc/self/fd/N/name."""
        dfd, name, close = self.at(path)
        return f"/proc/self/fd/{dfd}/{os.fsdecode(name)}", close

    def call_at(self, fn: Callable[..., T], path: Path, *args: Any, **kw: Any) -> T:
        """``fn(name, *args, dir_fd=..., **kw)`` on ``path``'s directory fd (the *at() form)."""
        dfd, name, close = self.at(path)
        try:
            return fn(name, *args, dir_fd=dfd, **kw)
        finally:
            if close >= 0:
                os.close(close)

    def call_proc(self, fn: Callable[..., T], path: Path, *args: Any) -> T:
        """``fn(/proc/self/fd/N/name, *args)`` for calls with no *at() form (xattrs)."""
        p, close = self.proc_path(path)
        try:
            return fn(p, *args, follow_symlinks=False)
        finally:
            if close >= 0:
                os.close(close)

    # -- calls -----------------------------------------------------------------------------------

    def lstat(self, path: Path) -> os.stat_result | None:
        """fstatat(AT_SYMLINK_NOFOLLOW); None if there is nothing there (ENOENT, ENOTDIR)."""
        dfd, name, close = self.at(path)
        try:
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            if close >= 0:
                os.close(close)

    def lstat_beneath(self, path: Path) -> os.stat_result | None:
        """:meth:`lstat` of a path read from metadata (a redirect), resolved beneath the branch
        root: nothing on the way is a symlink, a magic link or ``..`` out of the branch
        (overlayfs looks a redirect up one ``lookup_one`` at a time and follows no symlink).
        None if there is nothing there; ELOOP when a symlink is on the way, EXDEV for an
        escape. One ``openat2`` + ``fstat`` instead of one ``fstatat``: redirects only."""
        dfd, name, close = self.at(path, beneath=True)
        try:
            fd = _open_beneath(dfd, name, os.O_PATH | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            if close >= 0:
                os.close(close)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: Path) -> os.stat_result:
        return self.call_at(os.stat, path, follow_symlinks=False)

    def exists(self, path: Path) -> bool:
        return self.lstat(path) is not None

    def meta_exists(self, path: Path) -> bool:
        """Is the union meta entry (``.wh.*``) at ``path`` there? A branch that is itself a
        union refuses such names with EPERM: it has applied its own whiteouts already."""
        try:
            return self.lstat(path) is not None
        except PermissionError:
            return False

    def open(self, path: Path, flags: int, mode: int = 0o777) -> int:
        return self.call_at(os.open, path, flags | os.O_CLOEXEC, mode)

    def opendir(self, path: Path) -> int:
        return self.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def listdir(self, path: Path) -> list[bytes]:
        fd = self.opendir(path)
        try:
            return [os.fsencode(n) for n in os.listdir(fd)]
        finally:
            os.close(fd)

    def mkdir(self, path: Path, mode: int) -> None:
        self.call_at(os.mkdir, path, mode)

    def rmdir(self, path: Path) -> None:
        self.call_at(os.rmdir, path)

    def unlink(self, path: Path) -> None:
        self.call_at(os.unlink, path)

    def symlink(self, target: bytes, path: Path) -> None:
        self.call_at(lambda name, dir_fd: os.symlink(target, name, dir_fd=dir_fd), path)

    def readlink(self, path: Path) -> bytes:
        target: bytes = self.call_at(os.readlink, path)
        return target

    def mknod(self, path: Path, mode: int, rdev: int) -> None:
        self.call_at(os.mknod, path, mode, rdev)

    def call_two_at(
        self, fn: Callable[[int, bytes, int, bytes], None], src: Path, dst_branch: Branch, dst: Path
    ) -> None:
        """``fn(src_dir_fd, src_name, dst_dir_fd, dst_name)``: the two-name *at() calls."""
        sfd, sname, sclose = self.at(src)
        try:
            dfd, dname, dclose = dst_branch.at(dst)
            try:
                fn(sfd, sname, dfd, dname)
            finally:
                if dclose >= 0:
                    os.close(dclose)
        finally:
            if sclose >= 0:
                os.close(sclose)

    def link(self, src: Path, dst_branch: Branch, dst: Path) -> None:
        self.call_two_at(
            lambda sfd, sname, dfd, dname: os.link(
                sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False
            ),
            src,
            dst_branch,
            dst,
        )

    def rename(self, src: Path, dst_branch: Branch, dst: Path, flags: int = 0) -> None:
        self.call_two_at(
            lambda sfd, sname, dfd, dname: libc.renameat2(sfd, sname, dfd, dname, flags),
            src,
            dst_branch,
            dst,
        )

    def chown(self, path: Path, uid: int, gid: int) -> None:
        self.call_at(os.chown, path, uid, gid, follow_symlinks=False)

    def chmod(self, path: Path, mode: int) -> None:
        self.call_at(os.chmod, path, mode)

    def utime(self, path: Path, ns: tuple[int, int]) -> None:
        self.call_at(os.utime, path, ns=ns, follow_symlinks=False)

    # xattrs have no *at() form: go through /proc/self/fd/N/NAME
    def getxattr(self, path: Path, name: bytes) -> bytes:
        return self.call_proc(os.getxattr, path, name)

    def listxattr(self, path: Path) -> list[str]:
        return self.call_proc(os.listxattr, path)

    def setxattr(self, path: Path, name: bytes, value: bytes, flags: int = 0) -> None:
        self.call_proc(os.setxattr, path, name, value, flags)

    def removexattr(self, path: Path, name: bytes) -> None:
        self.call_proc(os.removexattr, path, name)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.fd)


def _open_beneath(dirfd: int, path: bytes, flags: int) -> int:
    """``openat2(dirfd, path, flags, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``."""
    return libc.openat2(dirfd, path, flags, libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS)


def open_branches(specs: list[tuple[str, bool]]) -> list[Branch]:
    """Open every branch (top first)."""
    out: list[Branch] = []
    try:
        for i, (path, writable) in enumerate(specs):
            out.append(Branch.open_branch(i, path, writable))
    except OSError:
        for b in out:
            b.close()
        raise
    return out
