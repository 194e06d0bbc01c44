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
from dataclasses import dataclass, field

from stackfs.union import whiteout
from stackfs.union.branches import Branch, Path

#: a directory whose mtime is younger than this may still change within the same tick
SETTLE_NS = 50_000_000


@dataclass(slots=True)
class Entry:
    name: bytes
    branch: int
    is_dir: bool


@dataclass
class Listing:
    entries: list[Entry]
    #: (branch, st_ino, st_mtime_ns) of every layer directory when the list was made
    stamp: tuple[tuple[int, int, int], ...]
    made_ns: int
    #: readdirplus replies of the entries (index -> reply), kept for the attribute timeout so a
    #: warm ``ls`` does not stat every entry again (aufs keeps its vdir ``rdcache`` seconds)
    replies: list | None = None
    #: when the oldest reply in ``replies`` was made (time.monotonic_ns)
    replies_ns: int = 0


def _scan(br: Branch, path: Path) -> list[tuple[bytes, bool]]:
    fd = br.opendir(path)
    try:
        with os.scandir(fd) as it:
            return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(fd)


def layer_stamp(branches: list[Branch], layers: list[tuple[int, Path]]):
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

    def get(self, uino: int, stamp) -> Listing | None:
        lst = self.listings.get(uino)
        if lst is None or stamp is None or lst.stamp != stamp:
            return None
        # a change within the same clock tick as the listing would not move the mtime
        if any(lst.made_ns - m < SETTLE_NS for _b, _i, m in stamp):
            return None
        return lst

    def put(self, uino: int, stamp, entries: list[Entry], made_ns: int) -> Listing:
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
