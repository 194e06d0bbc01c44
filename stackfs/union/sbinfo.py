"""The state of one union mount (aufs ``struct au_sbinfo``, overlayfs ``struct ovl_fs``): the one
room that the FUSE operations (:mod:`stackfs.union.fs`) and the copy-up
(:mod:`stackfs.union.copy_up`) both receive, so that neither reaches into the other.

As overlayfs keeps ``overlayfs.h`` as the one internal interface (``copy_up.c`` reaches
``dir.c`` and ``inode.c`` only through the helpers declared there), :class:`SbInfo` holds what
a mount has and the helpers every family of operations uses:

* the branches, top first, the writable upper (``ovl_upper_mnt``) and the work directory with
  its names (``WORK/tmp``, ``WORK/plink``; set up and cleaned at mount as overlayfs'
  ``ovl_make_workdir`` does), one mount per work directory (``WORK/lock``);
* the inode-number table (:class:`~stackfs.union.xino.Xino`, aufs ``si_xib``) and the node
  table (:class:`~stackfs.union.inode.NodeTable`);
* resolution of a directory's layers (:meth:`SbInfo.resolve`, overlayfs ``ovl_lookup`` of a
  parent known only from readdirplus);
* invalidation: of the kernel's cached attributes (:meth:`SbInfo.inval_attrs`,
  ``ovl_copyattr`` then ``fuse_invalidate_attr`` on the kernel's side) and of the merged
  listings and readdirplus replies (:meth:`SbInfo.dir_modified`, :meth:`SbInfo.attrs_changed`,
  overlayfs ``ovl_dir_modified``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any, TypeVar

import pyfuse3

from stackfs.kernel.state import KernelState
from stackfs.runtime.daemon import in_worker
from stackfs.union import readdir as rd
from stackfs.union.branches import Branch, Path, open_branches
from stackfs.union.inode import Node, NodeTable
from stackfs.union.lookup import lookup_child
from stackfs.union.options import UnionOptions
from stackfs.union.xino import ROOT, Xino

T = TypeVar("T")

#: copy-ups (and opaque directories) being built: renamed into place when complete
TMP_DIR = b"tmp"
#: pseudo-links ``WORK/plink/UINO`` of hard-linked lower files copied up
PLINK_DIR = b"plink"


def plink_path(uino: int) -> Path:
    """``WORK/plink/UINO``."""
    return (PLINK_DIR, str(uino).encode())


async def branch_call(blocking: bool, fn: Callable[..., T], *args: Any) -> T:
    """Run branch syscalls: in a worker thread if a FUSE branch is involved (the control
    socket keeps answering while a lower layer is wedged), else inline (faster)."""
    if blocking:
        return await in_worker(fn, *args)
    return fn(*args)


def erofs() -> OSError:
    """The error of a write to a union without an upper branch."""
    return OSError(errno.EROFS, "read-only union (no upper branch)")


def rmtree(br: Branch, path: Path) -> None:
    """Remove ``path`` in ``br`` and everything below it."""
    st = br.lstat(path)
    if st is None:
        return
    if not stat_mod.S_ISDIR(st.st_mode):
        br.unlink(path)
        return
    for n in br.listdir(path):
        rmtree(br, path + (n,))
    br.rmdir(path)


class SbInfo:
    """One union mount's state: ``opts.branches`` (top first), work directory, xino, nodes."""

    def __init__(self, opts: UnionOptions, kernel: KernelState) -> None:
        self.opts = opts
        #: the mount's kernel models (injection points, locks)
        self.kernel = kernel
        self.branches: list[Branch] = open_branches([(b.path, b.writable) for b in opts.branches])
        self.upper: Branch | None = self.branches[0] if self.branches[0].writable else None
        self.work: Branch | None = None
        self._work_lock_fd = -1
        self.xino = Xino(None)
        if self.upper is not None:
            assert opts.workdir is not None
            self.work = self._setup_workdir(opts.workdir)
            self.upper.whiteout_style = self.work.whiteout_style = opts.whiteout
        for br in self.branches if self.work is None else [*self.branches, self.work]:
            br.userxattr = opts.userxattr
        st = self.branches[0].stat(())
        root = Node(ROOT, None, b"", st.st_mode, tuple(range(len(self.branches))))
        self.nodes = NodeTable(root)
        #: merged directory listings and their readdirplus replies
        self.listings = rd.ListingCache()
        blocking = [b.index for b in self.branches if b.blocking]
        #: the lowest branch that may block (lookups from a parent whose top is above it do)
        self.blocking_max = max(blocking) if blocking else -1
        self.stats = {"copy_up": 0, "lookup": 0, "readdir_kept": 0}
        #: the FUSE session is up: notifications to the kernel work
        self.live = False

    def _setup_workdir(self, path: str) -> Branch:
        """Take the work directory (one mount at a time), make ``tmp`` and ``plink`` and empty
        ``tmp`` of what a SIGKILL left in the middle of a copy-up (``ovl_make_workdir``)."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        w = Branch.open_branch(-1, path, True)
        fd = w.open((b"lock",), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            w.close()
            raise OSError(errno.EBUSY, f"workdir {path} is in use by another mount") from None
        self._work_lock_fd = fd
        self.xino = Xino(os.path.join(path, "xino"))
        for d in (TMP_DIR, PLINK_DIR):
            try:
                w.mkdir((d,), 0o700)
            except FileExistsError:
                pass
        if not w.stat((TMP_DIR,)).st_mode & stat_mod.S_ISGID:
            w.new_owner = (os.geteuid(), os.getegid())
        # what a SIGKILL left in the middle of a copy-up: never visible, now garbage
        for n in w.listdir((TMP_DIR,)):
            st = w.lstat((TMP_DIR, n))
            if st is not None:
                self.xino.drop_override(st.st_ino)  # its number may be reused
            try:
                if st is not None and stat_mod.S_ISDIR(st.st_mode):
                    rmtree(w, (TMP_DIR, n))
                else:
                    w.unlink((TMP_DIR, n))
            except OSError:
                pass
        return w

    def close(self) -> None:
        for b in self.branches:
            b.close()
        if self.work is not None:
            self.work.close()
        if self._work_lock_fd >= 0:
            os.close(self._work_lock_fd)
            self._work_lock_fd = -1
        self.xino.close()

    # -- branches ----------------------------------------------------------------------------

    def need_upper(self) -> Branch:
        """The upper branch, or EROFS (overlayfs ``ovl_want_write`` on a read-only overlay)."""
        if self.upper is None:
            raise erofs()
        return self.upper

    def blk_from(self, bi: int) -> bool:
        """Does a walk over branch ``bi`` and those below touch a FUSE branch?"""
        return self.blocking_max >= bi

    # -- resolution --------------------------------------------------------------------------

    async def resolve(self, node: Node) -> None:
        """Make sure directory ``node`` knows its layers (readdirplus nodes do not yet)."""
        if node.resolved or node.parent is None:
            return
        await self.resolve(node.parent)
        f = await branch_call(
            self.blk_from(node.parent.top), lookup_child, self.branches, node.parent, node.name, 0
        )
        if f is None:
            raise OSError(errno.ENOENT, "directory vanished from its branches")
        node.layers, node.redirect, node.mode = f.layers, f.redirect, f.st.st_mode
        node.resolved = True

    # -- invalidation ------------------------------------------------------------------------

    def inval_attrs(self, node: Node) -> None:
        """Drop the kernel's cached attributes of ``node`` after the union changed them behind
        its back (attributes only: no page-cache invalidation, so no inode lock is taken and
        it is safe inside a request handler)."""
        if not self.live:
            return
        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(node.uino), attr_only=True)
        except OSError:
            pass  # the kernel does not hold this inode

    def dir_modified(self, *dirs: Node) -> None:
        """The entries of ``dirs`` changed: drop their listings, and the replies their parents
        keep for them (a directory's mtime, ctime and st_nlink moved)."""
        for d in dirs:
            self.listings.invalidate(d.uino)
            self.attrs_changed(d)

    def attrs_changed(self, node: Node) -> None:
        """``node``'s attributes changed through the union: its directory's cached readdirplus
        replies must not hand out the old ones."""
        if node.parent is not None:
            self.listings.drop_replies(node.parent.uino)
