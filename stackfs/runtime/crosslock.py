"""The cross-layer lock: a layer above takes a lower inode's modelled ``i_rwsem`` through xattrs.

This is how aufs reaches a lower inode's i_mutex, through the VFS and nothing else: the layer
above makes a syscall on the lower mount, and the lower daemon takes the inode's modelled
``i_rwsem`` for the calling thread (``ctx.pid``). Both sides of the protocol live here, once:
the server side (:func:`serve_setxattr`, :func:`serve_removexattr`, :func:`serve_getxattr`) for
every testbed filesystem that can be a lower layer (the backends, and the union when a union is
stacked on it), and the client side (:func:`lock`, :func:`unlock`) for copy-up.

Names (docs/ARCHITECTURE.md):

- ``setxattr(path, "trusted.stackfs.i_rwsem", b"write" | b"read")`` takes, ``removexattr`` releases:
  the form that mirrors ``vfs_setxattr -> inode_lock`` most closely. Under contention it deadlocks
  for real, because the VFS holds the FUSE inode's *real* i_rwsem around SETXATTR/REMOVEXATTR.
- ``getxattr(path, "trusted.stackfs.i_rwsem.write" | ".read")`` takes and
  ``getxattr(path, "trusted.stackfs.i_rwsem.unlock")`` releases: ``vfs_getxattr`` takes no inode
  lock, so these are contention-safe. A take by a task that holds the lock in that mode already
  returns at once (a size-0 probe followed by the real call must not lock twice); release is
  idempotent.

The xattrs are never stored and never listed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import pyfuse3

from stackfs.kernel.locks import RWSem, UnlockError
from stackfs.kernel.task import Task, calls, running_as

log = logging.getLogger(__name__)

XATTR_PREFIX = b"trusted.stackfs."
XATTR_I_RWSEM = XATTR_PREFIX + b"i_rwsem"
XATTR_LOCK_WRITE = XATTR_I_RWSEM + b".write"
XATTR_LOCK_READ = XATTR_I_RWSEM + b".read"
XATTR_UNLOCK = XATTR_I_RWSEM + b".unlock"

#: how a lower i_rwsem of the inode being served is found: called only when needed
SemOf = Callable[[], RWSem]


def reserved(name: bytes) -> bool:
    """Whether ``name`` is in the testbed's reserved xattr namespace."""
    return name.startswith(XATTR_PREFIX)


def release_exited_holders(sem: RWSem) -> int:
    """Release holds of tasks that have exited (a real task cannot return to user space holding
    i_rwsem; one that took it through the xattr and died would leak it forever)."""
    released = 0
    for holder in list(sem.holders):
        if not os.path.exists(f"/proc/{holder.task.pid}"):
            log.warning("releasing %s held by exited task %s", sem.ident, holder.task)
            (sem.up_write if holder.mode == "write" else sem.up_read)(holder.task)
            released += 1
    return released


async def down(sem: RWSem, pid: int, mode: bytes, syscall: str, again: bool = True) -> None:
    """``inode_lock()`` / ``inode_lock_shared()`` of ``sem`` for the task ``pid``.

    ``again=False``: a task that holds the lock in this mode already gets it at once.
    """
    mode = mode.rstrip(b"\0")
    if mode not in (b"write", b"read"):
        raise pyfuse3.FUSEError(errno.EINVAL)
    task = Task.from_pid(pid)
    if not again and sem.held_by(task) == mode.decode():
        return
    lock_fn = "inode_lock" if mode == b"write" else "inode_lock_shared"
    with running_as(task), calls(f"sys_{syscall}", f"vfs_{syscall}", lock_fn):
        if mode == b"write":
            await sem.down_write(task)
        else:
            await sem.down_read(task)


def up(sem: RWSem | None, pid: int) -> None:
    """``inode_unlock()`` for the task ``pid``; ENODATA if it holds nothing."""
    task = Task.from_pid(pid)
    held = sem.held_by(task) if sem is not None else None
    try:
        if sem is None or held is None:
            raise UnlockError("not held")
        if held == "write":
            sem.up_write(task)
        else:
            sem.up_read(task)
    except UnlockError:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None


async def serve_setxattr(sem_of: SemOf, name: bytes, value: bytes, pid: int) -> None:
    if name != XATTR_I_RWSEM:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
    await down(sem_of(), pid, value, "setxattr")


def serve_removexattr(sem_of: SemOf, name: bytes, pid: int) -> None:
    if name != XATTR_I_RWSEM:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
    up(sem_of(), pid)


async def serve_getxattr(sem_of: SemOf, name: bytes, pid: int) -> bytes:
    if name in (XATTR_LOCK_WRITE, XATTR_LOCK_READ):
        mode = name.rsplit(b".", 1)[1]
        await down(sem_of(), pid, mode, "getxattr", again=False)
        return mode
    if name == XATTR_UNLOCK:  # idempotent: a size-0 probe may have released it already
        with contextlib.suppress(pyfuse3.FUSEError):
            up(sem_of(), pid)
        return b"unlocked"
    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)


# -- the client side: what copy-up calls on a lower branch -------------------------------------

#: how the caller names the file: a path, or a branch-relative path tuple (the union's branches)
P = TypeVar("P")

_NO_LOCK_BELOW = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENODATA)


def lock(getxattr: Callable[[P, bytes], bytes], path: P, mode: str = "write") -> bool:
    """Take the lower inode's i_rwsem from this thread (the owner the lower layer sees).

    Returns False when there is no modelled lock below (a plain directory, a foreign FUSE
    filesystem), True when it is held now.
    """
    name = XATTR_LOCK_WRITE if mode == "write" else XATTR_LOCK_READ
    try:
        getxattr(path, name)
    except OSError as e:
        if e.errno in _NO_LOCK_BELOW:
            return False
        raise
    return True


def unlock(getxattr: Callable[[P, bytes], bytes], path: P) -> None:
    """Release the lower inode's i_rwsem taken by :func:`lock` from this thread."""
    try:
        getxattr(path, XATTR_UNLOCK)
    except OSError as e:
        if e.errno not in _NO_LOCK_BELOW:
            raise
