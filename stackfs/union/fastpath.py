"""The kernel's fast paths for the union (issue 15): fewer FUSE requests per operation.

A pyfuse3 request costs ~25 µs of Python, so the union asks the kernel to do the work where
the union's semantics allow it (mount options, on by default but ``writeback_cache``;
``fastpath=off`` for none):

* ``no_open``: OPEN is answered with ENOSYS. The kernel (``fuse_file_open``) sets
  ``fc->no_open`` and from then on sends neither OPEN nor RELEASE; it keeps the page cache
  across opens (``FOPEN_KEEP_CACHE`` is its default then). READ, WRITE, FSYNC arrive with
  file handle 0, which the patched pyfuse3 turns into ``-INODE``: the union keeps one branch
  fd per inode (opened at the first read or write, closed at FORGET). Copy-up therefore
  happens at the first WRITE, SETATTR (truncate, chmod, ...) or xattr change, not at open(2):
  ``open(O_WRONLY)`` + ``close`` without a write copies nothing (overlayfs copies up at open,
  aufs too; the reproducers that need the copy-up at open mount with ``fastpath=off``).
  ``FUSE_CAP_ATOMIC_O_TRUNC`` is turned off then (without OPEN the kernel would truncate
  nothing at ``open(O_TRUNC)``: ``fuse_setattr`` skips an ``ATTR_OPEN`` truncate when OPEN is
  atomic), so O_TRUNC arrives as SETATTR and copies up there.
  CREATE is answered with ENOSYS too (``fc->no_create``): the kernel makes a new file with
  MKNOD and opens it without a request, so no RELEASE follows. A regular file unlinked
  or renamed over through the union keeps its branch fd until FORGET (the kernel's inode
  may still be open), so an open file still reads after unlink or rename-over.
* ``no_opendir``: OPENDIR is answered with ENOSYS (``fc->no_opendir``): no OPENDIR and
  RELEASEDIR; the kernel then caches listings by default (``FOPEN_CACHE_DIR |
  FOPEN_KEEP_CACHE``) and READDIRPLUS arrives by inode.
* ``cache_dir``: when OPENDIR is answered, reply ``FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE``
  (``fuse_readdir_cached``): a warm readdir is served from the kernel's cache. The kernel drops
  the cache when the directory changes through the union or its mtime moves.
* ``writeback_cache`` (off by default): ``FUSE_CAP_WRITEBACK_CACHE``: the kernel caches
  writes and sends them in big WRITEs (at close at the latest: ``fuse_flush`` writes the inode
  back); it may READ through a write-only file, so files opened for writing are opened
  ``O_RDWR`` and without ``O_APPEND`` (the kernel positions appends itself). It pays off for
  small writes (``dd bs=4k``: one WRITE per MiB instead of 256); with 1 MiB writes it saves
  nothing and costs a SETATTR per written file (the kernel's mtime, at close or eviction),
  and a copy-up that fails at the first write shows only at close(2).

With ``attr_timeout=0`` (changes made directly in a branch show at once, aufs' udba) the
kernel must not trust its caches: ``no_opendir``, ``cache_dir`` and ``writeback_cache`` are off
then (with the writeback cache the kernel ignores a changed mtime, ``fuse_change_attributes``).

``read_ahead_kb`` (default 1024): the union's FUSE mount has its own bdi (``0:CONN``), whose
readahead the kernel caps at 128 KiB at FUSE_INIT (``process_init_reply``); right after INIT
the daemon raises it in ``/sys/class/bdi/0:CONN/read_ahead_kb``, so a sequential read comes in
READs of up to 1 MiB (``max_pages``) instead of 128 KiB: 1 request per MiB instead of 8. It
touches only this mount's bdi.

``no_open``, ``no_opendir`` and ``cache_dir`` need the stackfs patch to pyfuse3
(``patches/pyfuse3-3.5.0-stackfs.patch``, built by ``provision.sh``); without it they are off.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3
import trio

from stackfs.runtime import mountinfo
from stackfs.union.branches import Branch, Path
from stackfs.union.options import UnionOptions

log = logging.getLogger(__name__)


def _patched() -> bool:
    try:
        pyfuse3.FileInfo(cache_readdir=1)  # type: ignore[call-arg]
    except TypeError:
        return False
    return True


#: pyfuse3 carries the stackfs patch (FileInfo.cache_readdir, enable_inode_handles)
PATCHED = _patched()
#: branch fds kept open for I/O by inode (the oldest quarter is closed past this)
MAX_INODE_FILES = 1024


@dataclass(frozen=True, slots=True)
class FastPaths:
    """Which of the kernel's fast paths this mount uses."""

    no_open: bool = False
    no_opendir: bool = False
    cache_dir: bool = False
    writeback_cache: bool = False

    @classmethod
    def from_options(cls, opts: UnionOptions, patched: bool = PATCHED) -> FastPaths:
        caching = opts.attr_timeout > 0  # timeout=0: changes made in a branch show at once
        return cls(
            no_open=opts.no_open and patched and opts.upper is not None,
            no_opendir=opts.no_opendir and patched and caching,
            cache_dir=opts.cache_dir and patched and caching,
            writeback_cache=opts.writeback_cache and patched and caching and opts.upper is not None,
        )

    @property
    def inode_handles(self) -> bool:
        """Requests may come without a file handle (the patched pyfuse3 passes -INODE)."""
        return self.no_open or self.no_opendir

    def describe(self) -> dict[str, bool]:
        return {
            "no_open": self.no_open,
            "no_opendir": self.no_opendir,
            "cache_dir": self.cache_dir,
            "writeback_cache": self.writeback_cache,
            "pyfuse3_patched": PATCHED,
        }


def inode_of(fh: int) -> int | None:
    """The inode a handle-less request is for (the patched pyfuse3 passes ``-INODE``)."""
    return -fh if fh < 0 else None


def open_flags(flags: int, writeback: bool) -> int:
    """Branch open flags for an OPEN with ``flags``: with the writeback cache the kernel reads
    through write-only files and positions appends itself (``fuse_file_open``)."""
    flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
    if writeback and flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    if writeback:
        flags &= ~os.O_APPEND
    return flags | os.O_NOFOLLOW


def open_data(br: Branch, path: Path, writable: bool) -> tuple[int, bool]:
    """Open a file's data for I/O by inode: read-write where it may be written (the upper
    branch, the pseudo-link), read-only below. Returns (fd, writable)."""
    if writable:
        try:
            return br.open(path, os.O_RDWR | os.O_NOFOLLOW), True
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):
                raise
    return br.open(path, os.O_RDONLY | os.O_NOFOLLOW), False


def set_read_ahead(kb: int) -> str | None:
    """Set the readahead of this daemon's FUSE mount to ``kb`` KiB, in its bdi's
    ``read_ahead_kb``. Returns the sysfs path written, None when the mount is not found."""
    pid = os.getpid()
    for m in mountinfo.fuse_mounts():
        if m.is_testbed and m.daemon_pid == pid:
            path = f"/sys/class/bdi/{m.major}:{m.minor}/read_ahead_kb"
            with open(path, "w") as f:
                f.write(f"{kb}\n")
            return path
    return None


def raise_read_ahead_after_init(kb: int) -> None:
    """From ``init()`` (inside FUSE_INIT): set the readahead once the INIT reply, which caps it
    (``process_init_reply``), has been sent."""

    async def later() -> None:
        await trio.sleep(0)  # the INIT reply is written when init() returns
        try:
            if set_read_ahead(kb) is None:
                log.warning("cannot raise the readahead: the mount is not in mountinfo")
        except OSError as exc:
            log.warning("cannot raise the readahead: %s", exc)

    trio.lowlevel.spawn_system_task(later)
