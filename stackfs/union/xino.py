"""Inode-number translation (aufs ``xino``): one st_ino per union object, stable for good.

The union inode number of an object found in branch ``b`` with branch inode ``i`` is
``(i << SHIFT) | b``: unique within the mount and the same after a remount, with no table at all
for the common case (the idea of overlayfs' ``xino``: the branch index in spare bits). It is also
the FUSE node id, since pyfuse3 uses one number for both.

A table is needed where that rule would change the number:

* copy-up: the upper copy has a new branch inode, but must keep the number of the lower object
  (aufs ``au_xino_write`` at ``au_cpup``). An *override* maps upper inode -> union inode;
* branch inodes too large for the spare bits get an allocated number;
* a new upper object whose natural number the kernel still holds for a removed object (the
  upper reused the inode number; the node is not forgotten yet) gets an allocated number too,
  as an override (:meth:`Xino.renumber`): a FUSE node id names one object while the kernel
  holds it, and the number stays the object's after a remount.

The table is an append-only log in the work directory (``WORK/xino``), read back at mount time and
compacted when mostly dead. Records are written before the rename that makes a copy visible, so a
SIGKILL can lose nothing that a lookup could see. It also keeps, per hard-linked inode copied up
through a pseudo-link (``WORK/plink/UINO``, aufs' ``plink``), how many of its lower names still
point at the lower inode (for st_nlink).
"""

from __future__ import annotations

import os
import struct
import threading

SHIFT = 5
#: branch tag of allocated numbers (no branch has this index)
ALLOC_TAG = (1 << SHIFT) - 1
MAX_NATURAL = 1 << (64 - SHIFT - 1)
ROOT = 1

_REC = struct.Struct("<cQQQ")
OVERRIDE, DROP, LOWER_NAMES, ALLOC = b"O", b"D", b"N", b"A"


class Xino:
    """The translation table; ``path`` None keeps it in memory only (read-only unions)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.overrides: dict[int, int] = {}
        self.lower_names: dict[int, int] = {}
        self.alloc: dict[tuple[int, int], int] = {}
        self.next_alloc = 1
        self._lock = threading.Lock()
        self._fd = -1
        self._records = 0
        if path is not None:
            self._load()

    # -- persistence -----------------------------------------------------------------------------

    def _apply(self, kind: bytes, a: int, b: int, c: int) -> None:
        if kind == OVERRIDE:
            self.overrides[a] = b
            if b & ALLOC_TAG == ALLOC_TAG:  # a renumbered object (:meth:`renumber`)
                self.next_alloc = max(self.next_alloc, (b >> SHIFT) + 1)
        elif kind == DROP:
            self.overrides.pop(a, None)
        elif kind == LOWER_NAMES:
            if b:
                self.lower_names[a] = b
            else:
                self.lower_names.pop(a, None)
        elif kind == ALLOC:
            self.alloc[(a, b)] = c
            self.next_alloc = max(self.next_alloc, (c >> SHIFT) + 1)

    def _load(self) -> None:
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        n = len(data) // _REC.size
        for k in range(n):
            self._apply(*_REC.unpack_from(data, k * _REC.size))
        self._records = n
        live = len(self.overrides) + len(self.lower_names) + len(self.alloc)
        if n > 1024 and n > 4 * live or len(data) % _REC.size:
            self._compact()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _compact(self) -> None:
        assert self.path is not None
        tmp = self.path + ".tmp"
        recs = [_REC.pack(OVERRIDE, a, b, 0) for a, b in self.overrides.items()]
        recs += [_REC.pack(LOWER_NAMES, a, b, 0) for a, b in self.lower_names.items()]
        recs += [_REC.pack(ALLOC, a, b, c) for (a, b), c in self.alloc.items()]
        with open(tmp, "wb") as f:
            f.write(b"".join(recs))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._records = len(recs)

    def _log(self, kind: bytes, a: int, b: int = 0, c: int = 0) -> None:
        if self._fd >= 0:
            os.write(self._fd, _REC.pack(kind, a, b, c))
            self._records += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- translation -----------------------------------------------------------------------------

    def uino(self, branch: int, ino: int) -> int:
        """The union inode number of branch ``branch``'s inode ``ino``."""
        if branch == 0 and self.overrides:
            u = self.overrides.get(ino)
            if u is not None:
                return u
        if ino < MAX_NATURAL:
            return (ino << SHIFT) | branch
        with self._lock:
            u = self.alloc.get((branch, ino))
            if u is None:
                u = (self.next_alloc << SHIFT) | ALLOC_TAG
                self.next_alloc += 1
                self.alloc[(branch, ino)] = u
                self._log(ALLOC, branch, ino, u)
            return u

    def natural(self, branch: int, ino: int) -> int:
        """The number without overrides (what a fresh upper object gets)."""
        if ino < MAX_NATURAL:
            return (ino << SHIFT) | branch
        return self.uino(branch, ino)

    def set_override(self, upper_ino: int, uino: int) -> None:
        """The upper inode ``upper_ino`` is a copy of union inode ``uino``."""
        with self._lock:
            if self.overrides.get(upper_ino) != uino:
                self.overrides[upper_ino] = uino
                self._log(OVERRIDE, upper_ino, uino)

    def renumber(self, upper_ino: int) -> int:
        """Give the new upper object ``upper_ino`` an allocated number instead of its natural
        one, which the kernel still holds for an object removed earlier whose inode number the
        upper filesystem reused (ext4 does at once): a node id names one object for as long as
        the kernel holds it (``UnionFS._create`` asks when the node table has that number)."""
        with self._lock:
            u = (self.next_alloc << SHIFT) | ALLOC_TAG
            self.next_alloc += 1
            self.overrides[upper_ino] = u
            self._log(OVERRIDE, upper_ino, u)
            return u

    def drop_override(self, upper_ino: int) -> None:
        """The upper inode is gone (or a new object took its number)."""
        with self._lock:
            if upper_ino in self.overrides:
                del self.overrides[upper_ino]
                self._log(DROP, upper_ino)

    def get_lower_names(self, uino: int) -> int:
        return self.lower_names.get(uino, 0)

    def set_lower_names(self, uino: int, n: int) -> None:
        with self._lock:
            n = max(n, 0)
            if self.lower_names.get(uino, 0) != n:
                if n:
                    self.lower_names[uino] = n
                else:
                    self.lower_names.pop(uino, None)
                self._log(LOWER_NAMES, uino, n)
