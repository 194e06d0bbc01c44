"""The modelled ``i_rwsem`` of a backend's inodes (mixin of :class:`~backends.base.StoreFS`).

A layer above takes it through the cross-layer lock xattrs of :mod:`stackfs.runtime.crosslock`, as
aufs
takes a lower inode's i_mutex through the VFS; the personalities take it in their own paths
(AFS: ``afs_linux_lock_inode`` under ``osi_VM_FlushPages``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends.tables import Inode
from stackfs.kernel.locks import RWSem
from stackfs.runtime import crosslock

if TYPE_CHECKING:
    from stackfs.kernel.state import KernelState


class InodeLocks:
    """Mixin of :class:`~backends.base.StoreFS`: the modelled i_rwsem of its inodes."""

    if TYPE_CHECKING:  # what the mixin uses of StoreFS
        kernel: KernelState

        def path_of(self, inode: Inode) -> str: ...

        def count(self, what: str, n: int = 1) -> None: ...

    def i_rwsem(self, inode: Inode) -> RWSem:
        """The modelled ``inode->i_rwsem`` of ``inode`` (holds of exited tasks released)."""
        sem = self.kernel.locks.i_rwsem(inode.ino, desc=f"{self.path_of(inode)} (ino {inode.ino})")
        if crosslock.release_exited_holders(sem):
            self.count("locks_of_exited_tasks")
        return sem
