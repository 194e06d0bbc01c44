"""Cross-layer locking: a layer above takes a lower inode's modelled i_rwsem through xattrs.

docs/ARCHITECTURE.md: ``setxattr(path, "trusted.stackfs.i_rwsem", b"write" | b"read")`` takes the
inode's modelled ``i_rwsem`` for the calling thread, as aufs takes a lower inode's i_mutex
through the VFS (``vfs_setxattr`` -> ``inode_lock``); ``removexattr`` releases it. Never stored,
never listed.

Under contention that pair deadlocks for real: the VFS holds the FUSE inode's *real* i_rwsem
around SETXATTR and REMOVEXATTR (``vfs_setxattr``/``vfs_removexattr`` -> ``inode_lock``), so a
task waiting in setxattr for the modelled lock keeps the holder's removexattr from ever reaching
the daemon. ``vfs_getxattr`` takes no inode lock, so the contention-safe forms are getxattr of
``trusted.stackfs.i_rwsem.write`` / ``.read`` (take; the value is the mode) and
``trusted.stackfs.i_rwsem.unlock`` (release, idempotent). A take through getxattr by a task that
already holds the lock in that mode returns at once (a size-0 probe followed by the real call
must not lock twice).
"""

from __future__ import annotations

import errno
import logging
import os

import pyfuse3

from backends.tables import Inode
from stackfs.kernel.locks import RWSem, UnlockError
from stackfs.kernel.task import Task, calls, running_as

log = logging.getLogger(__name__)

#: The reserved xattr namespace of the testbed; the one name in it is the lock below.
XATTR_PREFIX = b"trusted.stackfs."
XATTR_I_RWSEM = b"trusted.stackfs.i_rwsem"
#: getxattr forms (no real inode lock held by the VFS while they wait)
XATTR_LOCK_WRITE = XATTR_I_RWSEM + b".write"
XATTR_LOCK_READ = XATTR_I_RWSEM + b".read"
XATTR_UNLOCK = XATTR_I_RWSEM + b".unlock"


class InodeLocks:
    """Mixin of :class:`~backends.base.StoreFS`: the modelled i_rwsem of its inodes."""

    def i_rwsem(self, inode: Inode) -> RWSem:
        """The modelled ``inode->i_rwsem`` of ``inode``.

        A hold taken through the xattr by a task that has exited since is released first (a
        real task cannot return to user space holding i_rwsem; one that sets the xattr and dies
        would otherwise leak the lock forever).
        """
        sem = self.kernel.locks.i_rwsem(inode.ino, desc=f"{self.path_of(inode)} (ino {inode.ino})")
        for holder in list(sem.holders):
            if not os.path.exists(f"/proc/{holder.task.pid}"):
                log.warning("releasing %s held by exited task %s", sem.ident, holder.task)
                (sem.up_write if holder.mode == "write" else sem.up_read)(holder.task)
                self.count("locks_of_exited_tasks")
        return sem

    async def lock_i_rwsem(
        self, node: Inode, value: bytes, ctx, syscall: str = "setxattr", again: bool = True
    ) -> None:
        """``inode_lock()`` / ``inode_lock_shared()`` for the calling thread (a layer above).

        ``again=False``: a task that holds the lock in this mode already gets it at once.
        """
        mode = value.rstrip(b"\0")
        if mode not in (b"write", b"read"):
            raise pyfuse3.FUSEError(errno.EINVAL)
        task = Task.from_pid(ctx.pid)
        sem = self.i_rwsem(node)
        if not again and sem.held_by(task) == mode.decode():
            return
        with running_as(task), calls(f"sys_{syscall}", f"vfs_{syscall}", "inode_lock"):
            if mode == b"write":
                await sem.down_write(task)
            else:
                await sem.down_read(task)

    def unlock_i_rwsem(self, node: Inode, ctx) -> None:
        """``inode_unlock()`` for the calling thread; ENODATA if it holds nothing."""
        task = Task.from_pid(ctx.pid)
        sem = self.i_rwsem(node)
        held = sem.held_by(task)
        try:
            if held == "write":
                sem.up_write(task)
            elif held == "read":
                sem.up_read(task)
            else:
                raise UnlockError("not held")
        except UnlockError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
