"""A FUSE filesystem that is not the testbed's (no stackfs fsname, no control socket).

``python foreignfs.py MOUNTPOINT``: a lookup of any name starting with ``hang`` is never
answered. The watchdog must find its connection and daemon from /proc alone.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio
from pyfuse3 import FileNameT, InodeT, RequestContext


class Foreign(pyfuse3.Operations):
    async def getattr(
        self, inode: InodeT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_nlink = inode, stat.S_IFDIR | 0o755, 2
        return a

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if name.startswith(b"hang"):
            await trio.sleep_forever()
        raise pyfuse3.FUSEError(errno.ENOENT)


def main() -> None:
    pyfuse3.init(Foreign(), sys.argv[1], {"fsname=foreignfs", "subtype=foreign", "allow_other"})
    os.write(1, b"ready\n")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
