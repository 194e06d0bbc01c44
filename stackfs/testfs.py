"""Small filesystems that hang on purpose, for the lifecycle and the watchdog.

``hang``: the daemon is alive but a LOOKUP of a name starting with ``hang`` is never answered.
``lookup-mkdir``: the real kernel deadlock of shared/NOTES.md (the autofs4 shape of seed 001 and
"scenario 1" of Documentation/filesystems/fuse.rst): the LOOKUP handler of ``trigger`` waits for a
helper thread that calls ``mkdir()`` in the same directory through the mount. The caller of the
lookup holds the directory's i_rwsem shared (``__lookup_slow``); the helper needs it exclusive
(``filename_create``): neither can go on.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pyfuse3
import trio

from stackfs.daemon import DaemonConfig, TestbedOperations, in_worker, serve


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

    async def getattr(self, inode, ctx=None):
        if inode != pyfuse3.ROOT_INODE and inode not in self.names.values():
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == pyfuse3.ROOT_INODE and name in self.names:
            return self._attr(self.names[name])
        await self.special_lookup(name)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def special_lookup(self, name: bytes) -> None:
        return None

    async def mkdir(self, parent_inode, name, mode, ctx):
        if name in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self.names[name] = self.next_ino
        self.next_ino += 1
        return self._attr(self.names[name])

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        entries = sorted(self.names.items())
        for i, (name, ino) in enumerate(entries[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i):
                return

    async def releasedir(self, fh):
        return None


class HangFS(_MemDir):
    """Never answers a lookup of ``hang*``: a daemon that is alive but not answering."""

    async def special_lookup(self, name: bytes) -> None:
        if name.startswith(b"hang"):
            await trio.sleep_forever()


class LookupMkdirFS(_MemDir):
    """LOOKUP of ``trigger`` waits for a helper's mkdir through the same mount."""

    async def special_lookup(self, name: bytes) -> None:
        if name == b"trigger":
            await in_worker(os.mkdir, str(self.mountpoint / "made-by-helper"))


FILESYSTEMS = {"hang": HangFS, "lookup-mkdir": LookupMkdirFS}


def main(name: str, mountpoint: Path, debug: bool = False) -> int:
    ops = FILESYSTEMS[name](mountpoint.resolve())
    return serve(ops, DaemonConfig(kind=f"testfs-{name}", mountpoint=mountpoint, debug=debug))
