"""Small filesystems that hang on purpose, for the lifecycle and the watchdog.

``hang``: the daemon is alive but a LOOKUP of a name starting with ``hang`` is never answered.
``lookup-mkdir``: the real kernel deadlock of shared/NOTES.md (the autofs4 shape of seed 001 and
"scenario 1" of Documentation/filesystems/fuse.rst): the LOOKUP handler of ``trigger`` waits for a
helper thread that calls ``mkdir()`` in the same directory through the mount. The caller of the
lookup holds the directory's i_rwsem shared (``__lookup_slow``); the helper needs it exclusive
(``filename_create``): neither can go on.
``crash``: the daemon dies in the LOOKUP handler of a name starting with ``crash`` (``os._exit``,
status :data:`EXIT_CRASH`, no unmount): what a daemon bug does to its callers (ENOTCONN). With
``STACKFS_TESTFS_CRASH_MARKER=FILE`` in its environment it crashes only while FILE does not exist
(and creates it first): a flaky crash, for the runner's retry logic.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from pathlib import Path

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, InodeT, ModeT, RequestContext

from stackfs.runtime.daemon import (
    EXIT_CONNECTION_ABORTED,
    DaemonConfig,
    TestbedOperations,
    in_worker,
    serve,
)


class _MemDir(TestbedOperations):
    """A root directory with nothing in it but what ``mkdir`` makes."""

    kind = "testfs"

    def __init__(self, mountpoint: Path) -> None:
        super().__init__()
        self.mountpoint = mountpoint
        self.names: dict[bytes, int] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.t0 = time.time_ns()

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = stat.S_IFDIR | 0o755
        a.st_nlink = 2
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.t0
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    async def getattr(
        self, inode: InodeT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE and inode not in self.names.values():
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE and name in self.names:
            return self._attr(self.names[name])
        await self.special_lookup(name)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def special_lookup(self, name: bytes) -> None:
        return None

    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self.names[name] = self.next_ino
        self.next_ino += 1
        return self._attr(self.names[name])

    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        return inode

    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self.names.items())
        for i, (name, ino) in enumerate(entries[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i):
                return

    async def releasedir(self, fh: FileHandleT) -> None:
        return None


class HangFS(_MemDir):
    """Never answers a lookup of ``hang*``: a daemon that is alive but not answering."""

    async def special_lookup(self, name: bytes) -> None:
        if name.startswith(b"hang"):
            await trio.sleep_forever()


class LookupMkdirFS(_MemDir):
    """LOOKUP of ``trigger`` waits for a helper's mkdir through the same mount."""

    #: the helper's mkdir failed with ENOTCONN: the kernel's answer on an aborted connection
    saw_abort = False

    async def special_lookup(self, name: bytes) -> None:
        if name == b"trigger":
            try:
                await in_worker(os.mkdir, str(self.mountpoint / "made-by-helper"))
            except OSError as exc:  # the LOOKUP's reply carries the helper's errno
                self.saw_abort = self.saw_abort or exc.errno == errno.ENOTCONN
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


#: exit status of the ``crash`` test filesystem's daemon
EXIT_CRASH = 13


class CrashFS(_MemDir):
    """Dies in the LOOKUP handler of ``crash*``: a crashing daemon."""

    async def special_lookup(self, name: bytes) -> None:
        if not name.startswith(b"crash"):
            return
        marker = os.environ.get("STACKFS_TESTFS_CRASH_MARKER")
        if marker:
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                return  # crashed once already
        os._exit(EXIT_CRASH)


FILESYSTEMS = {"hang": HangFS, "lookup-mkdir": LookupMkdirFS, "crash": CrashFS}


def main(name: str, mountpoint: Path, debug: bool = False) -> int:
    ops = FILESYSTEMS[name](mountpoint.resolve())
    status = serve(ops, DaemonConfig(kind=f"testfs-{name}", mountpoint=mountpoint, debug=debug))
    if getattr(ops, "saw_abort", False) and status != EXIT_CONNECTION_ABORTED:
        # (serve said so already when the mount was still there)
        print(
            f"stackfs: the FUSE connection of {ops.mountpoint} was aborted (the helper's mkdir "
            "got ENOTCONN) and the mount is gone; exiting",
            file=sys.stderr,
        )
    return status
