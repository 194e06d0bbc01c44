"""autofs4's bookkeeping for the autofs personality (:mod:`backends.autofs`, seed 001).

``struct autofs_wait_queue`` (:class:`WaitQueue`: a request to the automount daemon, matched by
name, whose waiters sleep on a completion held by the daemon's thread), ``struct autofs_info``
(:class:`AutofsInfo`: a map key's dentry in the dcache model and its flags, with autofs4's
names), and what the kernel is doing when it sends a LOOKUP, read from the caller's kernel
stack (:class:`Caller`; the frames were checked on Linux 6.18, docs/autofs.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from stackfs.kernel.completion import Completion
from stackfs.kernel.dcache import Dentry
from stackfs.linux import proc

#: the lockdep-style event of a task that waits for the daemon with the parent's lock held
WAIT_UNDER_LOCK = "wait_under_lock"
#: the event of a lookup that woke on an expire's queue with its dentry unhashed (ENOENT)
LOOKUP_ENOENT = "lookup_enoent"

#: dentry flags, autofs4's names
PENDING = "DCACHE_AUTOFS_PENDING"
EXPIRING = "AUTOFS_INF_EXPIRING"
NEED_AUTOMOUNT = "DCACHE_NEED_AUTOMOUNT"
MOUNTED = "d_mountpoint"

#: kernel stack frames under which the caller holds the parent directory's i_rwsem (6.18)
DIR_LOCK_FRAMES = {
    "filename_create": "write",  # mkdir, mknod, symlink, link: lookup_one_qstr_excl
    "lookup_one_qstr_excl": "write",
    "__lookup_slow": "read",  # ->lookup of a path walk (lookup_slow)
    "lookup_open": "write",  # open(O_CREAT) (shared without O_CREAT)
    "do_rmdir": "write",
    "do_unlinkat": "write",
    "do_renameat2": "write",
}
#: frames of a lookup for a create's last component: the VFS passed autofs4 the intent
#: (``nd->flags`` with ``LOOKUP_CREATE``/``LOOKUP_EXCL`` and no ``LOOKUP_CONTINUE``), which
#: ``try_to_fill_dentry`` read; autofs4 never knew from it whether the caller held the lock
CREATE_INTENT_FRAMES = frozenset({"filename_create", "lookup_one_qstr_excl", "lookup_open"})

#: the variants whose ``->lookup`` hashes the new dentry (``d_add``) before it calls back the
#: daemon (2.6.18's root.c); the others delay the hashing until ``->mkdir`` (1864f7bd)
HASH_IN_LOOKUP = frozenset({"2.6.18", "rehash"})
#: the variants whose ``->lookup`` reuses the unhashed dentry an expire left (the rehash list,
#: ``autofs4_lookup_unhashed``; 2576737873dc's look-aside list, ``autofs4_lookup_expiring``)
REUSE_EXPIRING = frozenset({"rehash", "1864f7bd", "lookaside"})

#: frames of the FUSE request machinery and the syscall entry, left out of a caller's chain
_SKIP = {
    "request_wait_answer",
    "__fuse_simple_request",
    "fuse_simple_request",
    "fuse_lookup_name",
    "entry_SYSCALL_64_after_hwframe",
    "do_syscall_64",
}


@dataclass
class Caller:
    """What the kernel is doing when it sends a LOOKUP, from the caller's kernel stack."""

    frames: list[str]  # innermost first

    @classmethod
    def of(cls, tid: int) -> Caller:
        return cls(proc.kernel_stack(tid))

    @property
    def known(self) -> bool:
        return bool(self.frames)

    @property
    def revalidate(self) -> bool:
        """``->d_revalidate`` (``fuse_dentry_revalidate``) rather than ``->lookup``."""
        return "fuse_dentry_revalidate" in self.frames

    @property
    def lock(self) -> tuple[str, str] | None:
        """(frame, mode) of the parent's i_rwsem the caller really holds (FUSE), or None. An
        unreadable stack counts as holding it (never wait then: no deadlock is made up).

        The translation's business only: whether a wait that autofs4 did *after dropping the
        directory mutex* can be done here, where FUSE cannot drop it. No autofs4 decision
        reads it (autofs4 "could never be sure" it owned the mutex: seed 001)."""
        if not self.frames:
            return ("unknown", "write")
        for f in self.frames:
            if f in DIR_LOCK_FRAMES:
                return f, DIR_LOCK_FRAMES[f]
        return None

    @property
    def create_intent(self) -> bool:
        """The lookup is for the last component of a create (``LOOKUP_CREATE``, no
        ``LOOKUP_CONTINUE``): the intent autofs4 was given in ``nd->flags``."""
        return any(f in CREATE_INTENT_FRAMES for f in self.frames)

    def chain(self) -> tuple[str, ...]:
        """The real frames, outermost first, down to the FUSE operation."""
        return tuple(f for f in reversed(self.frames) if f not in _SKIP)


@dataclass
class WaitQueue:
    """``struct autofs_wait_queue``: one request to the daemon, by name, and its waiters."""

    token: int
    name: bytes
    type: str  # "mount" | "expire"
    completion: Completion
    notified: float | None = None
    #: the daemon's RMDIR of the mount point was seen (an expire between rmdir and READY)
    rmdir_seen: trio.Event = field(default_factory=trio.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "name": os.fsdecode(self.name),
            "type": self.type,
            "notified": self.notified,
            "rmdir_seen": self.rmdir_seen.is_set(),
            "completion": self.completion.to_json(),
        }


@dataclass
class AutofsInfo:
    """``struct autofs_info`` of one map key: its dentry in the model and its flags."""

    key: bytes
    dentry: Dentry | None = None
    flags: set[str] = field(default_factory=set)
    last_used: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "dentry": self.dentry.to_json() if self.dentry else None,
            "flags": sorted(self.flags),
            "last_used": self.last_used,
        }
