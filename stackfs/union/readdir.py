"""Merged readdir (aufs ``au_vdir``: the "virtual directory").

The entries of every layer of a directory are merged top down: the first layer that has a name
gives its type and branch, whiteouts of a layer hide the name in the layers below it, the union's
own ``.wh.*`` names are never listed. The merged list is built once per open directory stream at
offset 0 (``opendir`` or ``rewinddir``) and kept with the stream: an entry's offset is its index
in that list, so ``telldir``/``seekdir`` land on the same entry however the directory changes while
it is read, nothing is returned twice and nothing that stays is skipped (aufs keeps its vdir per
open file the same way). Entries removed since are left out at reply time.

A listing is cached per directory (``ListingCache``) and reused while none of the layers'
directories changed (their mtime and inode stay the same and are older than the clock's
granularity), so a warm ``ls`` does not read the branches again.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from stackfs.union import whiteout
from stackfs.union.branches import Branch, Path
from stackfs.union.inode import Node, NodeTable

#: a directory whose mtime is younger than this may still change within the same tick
SETTLE_NS = 50_000_000


@dataclass(slots=True)
class Entry:
    name: bytes
    branch: int
    is_dir: bool


@dataclass(slots=True)
class Reply:
    """The readdirplus reply of one entry of a listing, kept with it for the attribute timeout
    (aufs keeps its vdir ``rdcache`` seconds the same way)."""

    name: bytes
    attrs: pyfuse3.EntryAttributes
    uino: int
    mode: int
    #: the branch the entry was found in
    branch: int
    #: its data is in the pseudo-link (a lower name of a copied-up hard link)
    plink: bool
    #: the branch object's st_nlink
    nlink: int

    def may_have_moved(self, nodes: NodeTable) -> bool:
        """Can this file's attributes have changed without its directory changing? (a hard
        link, changed through another name; a file open, written through its handle)"""
        if stat_mod.S_ISDIR(self.mode):
            return False
        if self.nlink > 1:
            return True
        node = nodes.get(self.uino)
        return node is not None and node.opened > 0


#: a reply not made yet (None: the entry is gone)
UNSET: Any = object()


def make_replies(
    branches: list[Branch],
    node: Node,
    entries: list[Entry],
    *,
    uino_of: Callable[[int, int], int],
    plink_stat: Callable[[int], os.stat_result | None] | None,
    attr: Callable[[os.stat_result, int, int], pyfuse3.EntryAttributes],
) -> list[Reply | None]:
    """stat ``entries`` of directory ``node`` (relative to one directory fd per layer) and
    build their readdirplus replies; None for an entry gone since the listing was made.
    ``uino_of(branch, st_ino)`` numbers them, ``plink_stat(uino)`` is the pseudo-link's stat of
    a pseudo-linked inode (None otherwise; ``plink_stat`` None: there is no pseudo-link),
    ``attr(st, uino, layers)`` makes the attributes."""
    out: list[Reply | None] = []
    last = len(branches) - 1
    dfds: dict[int, int] = {}
    try:
        for e in entries:
            b = e.branch
            dfd = dfds.get(b)
            if dfd is None:
                try:
                    dfd = dfds[b] = branches[b].open(node.path(b), os.O_PATH | os.O_DIRECTORY)
                except (FileNotFoundError, NotADirectoryError):
                    dfd = dfds[b] = -1
            if dfd < 0:
                out.append(None)
                continue
            try:
                st = os.stat(e.name, dir_fd=dfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                out.append(None)
                continue
            uino = uino_of(b, st.st_ino)
            plink = False
            if b != 0 and plink_stat is not None:
                pst = plink_stat(uino)
                if pst is not None:
                    st, plink = pst, True
            mode = st.st_mode
            if stat_mod.S_ISDIR(mode):
                a = attr(st, uino, 2)
                a.st_nlink = st.st_nlink if b == last else 1
            else:
                a = attr(st, uino, 1)
            out.append(Reply(e.name, a, uino, mode, b, plink, st.st_nlink))
    finally:
        for fd in dfds.values():
            if fd >= 0:
                os.close(fd)
    return out


#: (branch, st_ino, st_mtime_ns) of every layer directory of a merged directory
Stamp = tuple[tuple[int, int, int], ...]


@dataclass
class Listing:
    entries: list[Entry]
    #: of every layer directory when the list was made (None: not kept)
    stamp: Stamp | None
    made_ns: int
    #: readdirplus replies of the entries (index -> reply), kept for the attribute timeout so a
    #: warm ``ls`` does not stat every entry again (aufs keeps its vdir ``rdcache`` seconds)
    replies: list[Reply | None] | None = None
    #: when the oldest reply in ``replies`` was made (time.monotonic_ns)
    replies_ns: int = 0


def _scan(br: Branch, path: Path) -> list[tuple[bytes, bool | None]]:
    """(name, is_dir) of a branch directory; is_dir None: an overlayfs whiteout (0/0 device)."""
    fd = br.opendir(path)
    out: list[tuple[bytes, bool | None]] = []
    try:
        with os.scandir(fd) as it:
            for e in it:
                is_dir = e.is_dir(follow_symlinks=False)
                if not is_dir and not e.is_file(follow_symlinks=False) and not e.is_symlink():
                    # a device, FIFO or socket: a 0/0 character device is a whiteout
                    try:
                        if whiteout.is_ovl_whiteout(e.stat(follow_symlinks=False)):
                            out.append((os.fsencode(e.name), None))
                            continue
                    except FileNotFoundError:
                        continue
                out.append((os.fsencode(e.name), is_dir))
    finally:
        os.close(fd)
    return out


def layer_stamp(branches: list[Branch], layers: list[tuple[int, Path]]) -> Stamp | None:
    """The :data:`Stamp` of ``layers``; None if one of them is gone."""
    out = []
    for bi, path in layers:
        st = branches[bi].lstat(path)
        if st is None:
            return None
        out.append((bi, st.st_ino, st.st_mtime_ns))
    return tuple(out)


def merge(branches: list[Branch], layers: list[tuple[int, Path]]) -> list[Entry]:
    """The merged entries of the directory whose layers are ``layers`` (branch, path)."""
    seen: set[bytes] = set()
    hidden: set[bytes] = set()
    out: list[Entry] = []
    for bi, path in layers:
        local_wh: list[bytes] = []
        for name, is_dir in _scan(branches[bi], path):
            if name.startswith(whiteout.WH_PREFIX):
                if not name.startswith(b".wh..wh."):
                    local_wh.append(name[4:])
                continue
            if is_dir is None:
                local_wh.append(name)  # an overlayfs whiteout
                continue
            if name in seen or name in hidden:
                continue
            seen.add(name)
            out.append(Entry(name, bi, is_dir))
        hidden.update(local_wh)
    return out


@dataclass
class ListingCache:
    """Merged listings by directory node id, validated against the layers' mtimes."""

    max_entries: int = 64
    listings: dict[int, Listing] = field(default_factory=dict)

    def get(self, uino: int, stamp: Stamp | None) -> Listing | None:
        lst = self.listings.get(uino)
        if lst is None or stamp is None or lst.stamp != stamp:
            return None
        # a change within the same clock tick as the listing would not move the mtime
        if any(lst.made_ns - m < SETTLE_NS for _b, _i, m in stamp):
            return None
        return lst

    def put(self, uino: int, stamp: Stamp | None, entries: list[Entry], made_ns: int) -> Listing:
        """Keep ``entries``; ``made_ns`` is the time the stamp was taken (before the scan)."""
        lst = Listing(entries, stamp, made_ns)
        if stamp is None:
            return lst
        if len(self.listings) >= self.max_entries:
            self.listings.pop(next(iter(self.listings)))
        self.listings[uino] = lst
        return lst

    def invalidate(self, uino: int) -> None:
        self.listings.pop(uino, None)

    def drop_replies(self, uino: int) -> None:
        """An entry's attributes changed through the union: stat the entries again."""
        lst = self.listings.get(uino)
        if lst is not None:
            lst.replies = None

    def clear(self) -> None:
        self.listings.clear()
