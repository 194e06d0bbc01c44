"""The tables of a backend: what the kernel's node ids, file handles and directory handles name.

An :class:`Inode` is an object the kernel knows: our FUSE node id, an ``O_PATH|O_NOFOLLOW``
descriptor on the store object (as libfuse's passthrough_ll keeps one), the object's identity
``(st_dev, st_ino)``, the kernel's lookup count and the best-known name ``(parent, name)``.
A :class:`ServerChange` describes what another client did to the server.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Inode:
    """An object the kernel knows: node id <-> store object."""

    ino: int
    fd: int
    key: tuple[int, int]
    kind: int  # stat.S_IFMT bits
    parent: int | None
    name: bytes
    nlookup: int = 0
    opens: int = 0
    #: (mtime_ns, size) when the kernel last had this file's pages (keep_cache decision)
    cache_sig: tuple[int, int] | None = None
    #: personality state (AFS vcache, NFS file handle state, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR


@dataclass(eq=False)
class Handle:
    """An open file: what ``fh`` names."""

    fh: int
    inode: Inode
    fd: int
    flags: int
    keep_cache: bool = False
    direct_io: bool = False
    #: whether :meth:`StoreFS.release` closes ``fd`` (a personality may share one descriptor)
    owns_fd: bool = True
    dirty: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class DirHandle:
    """An open directory and its listing (snapshot taken at offset 0: stable offsets)."""

    fh: int
    inode: Inode
    fd: int
    entries: list[bytes] | None = None


@dataclass
class ServerChange:
    """What another client did to the server (the store), for ``on_server_change``.

    ``inode``: the known inode of the object at ``path`` before the change (if the kernel knows
    it); ``replaced``: for a rename, the known inode that the rename removed at ``new_path``;
    ``parent``/``new_parent``: known inodes of the directories; names are the last components.
    """

    action: str
    path: bytes
    new_path: bytes | None = None
    inode: Inode | None = None
    replaced: Inode | None = None
    parent: Inode | None = None
    name: bytes = b""
    new_parent: Inode | None = None
    new_name: bytes = b""
    created: bool = False

    def describe(self) -> str:
        p = os.fsdecode(self.path)
        if self.new_path is not None:
            return f"server: {self.action} /{p} -> /{os.fsdecode(self.new_path)}"
        return f"server: {self.action} /{p}"
