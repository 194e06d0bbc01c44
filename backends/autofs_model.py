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
        """(frame, mode) of the parent's i_rwsem the caller holds, or None. An unreadable
        stack counts as holding it (never wait then: no deadlock is made up)."""
        if not self.frames:
            return ("unknown", "write")
        for f in self.frames:
            if f in DIR_LOCK_FRAMES:
                return f, DIR_LOCK_FRAMES[f]
        return None

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
