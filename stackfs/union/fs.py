"""The union filesystem: the pyfuse3 operations of kind ``union`` (aufs' ``aufs_iop``/``aufs_fop``).

One writable upper branch (index 0) over read-only lower branches, or read-only branches only.
Lookup, readdir, copy-up, whiteouts, inode numbers and branch access live in their own modules;
the mount's state (branches, work directory, xino, node table, resolution, invalidation) is
:class:`~stackfs.union.sbinfo.SbInfo`, which copy-up receives too (the two never import each
other: overlayfs' ``overlayfs.h``); this class ties them to FUSE requests:

* every modification of a lower object copies it up first (:meth:`UnionFS.copy_up`), parents
  first; copy-up and pseudo-links are one module (:class:`~stackfs.union.copy_up.CopyUpper`);
* a hard-linked object is one node with several names (:class:`~stackfs.union.inode.Node`
  aliases): removing or renaming one name reaches the object through another;
* unlink/rmdir leave whiteouts where a lower branch still has the name; mkdir over a whiteout
  makes an opaque directory; a lower directory is renamed by moving (or creating) its upper
  directory and recording a redirect, so no file data is copied and there is no EXDEV;
* syscalls on a branch that is a FUSE mount run through :func:`stackfs.runtime.daemon.in_worker`
(the
  control socket keeps answering while a lower layer is wedged); on plain directories they run
  inline, which is faster.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, RequestContext

from stackfs.kernel.locks import RWSem
from stackfs.kernel.task import calls
from stackfs.linux.libc import RENAME_EXCHANGE, RENAME_NOREPLACE
from stackfs.runtime import crosslock
from stackfs.runtime.daemon import TestbedOperations, in_worker
from stackfs.runtime.fuseattr import entry_attributes, negative_entry, statvfs_data
from stackfs.runtime.fuseerr import fuse_errors
from stackfs.union import fastpath, whiteout
from stackfs.union import readdir as rd
from stackfs.union.branches import Branch, Path
from stackfs.union.copy_up import CopyUpper
from stackfs.union.inode import Node
from stackfs.union.lookup import Found, lookup_child
from stackfs.union.options import UnionOptions
from stackfs.union.sbinfo import TMP_DIR, SbInfo, branch_call, plink_path, rmtree

log = logging.getLogger(__name__)

_XATTR_CREATE, _XATTR_REPLACE = 1, 2
_TRUSTED = "trusted."


@dataclass(slots=True, eq=False)
class BranchFile:
    """A union file open: the fd of its object in a branch (or its pseudo-link), by FUSE fh."""

    fd: int
    node: Node
    blocking: bool
    writable: bool = False
    #: a handle by inode (``no_open``): where its fd points, (top branch, pseudo-link)
    loc: tuple[int, bool] | None = None


@dataclass(slots=True, eq=False)
class MergedDirHandle:
    """An open merged directory: its node and the merged listing readdir serves from."""

    node: Node
    listing: rd.Listing | None = None
    #: when ``listing`` was taken (time.monotonic_ns)
    made: int = 0


class UnionFS(TestbedOperations):
    """aufs-like union of ``opts.branches`` (top first)."""

    kind = "union"

    def __init__(self, opts: UnionOptions) -> None:
        super().__init__()
        #: the mount's state (branches, work directory, xino, nodes): what copy-up gets too
        self.sbi = SbInfo(opts, self.kernel)
        #: the union's own xattr names (docs/security.md): hidden, EPERM to set or remove
        self.meta_xattrs = whiteout.meta_xattrs(opts.userxattr)
        #: copy-up and pseudo-links: everything the handlers need of them goes through here
        self.cu = CopyUpper(self.sbi)
        self.handles: dict[int, BranchFile] = {}
        self.dirs: dict[int, MergedDirHandle] = {}
        self._next_dh = 1
        #: names removed from directories that have open streams: dir uino -> name -> when
        self._gone: dict[int, dict[bytes, int]] = {}
        self.fast = fastpath.FastPaths.from_options(opts)
        #: the by-inode files in the order they were opened (the oldest are closed first)
        self._inode_files: dict[int, None] = {}
        # read by pyfuse3 at FUSE_INIT
        self.enable_writeback_cache = self.fast.writeback_cache
        self.enable_inode_handles = self.fast.inode_handles
        self.enable_atomic_o_trunc = not self.fast.no_open  # O_TRUNC comes as SETATTR then
        self.entry_timeout = opts.entry_timeout
        self.attr_timeout = opts.attr_timeout
        self.negative_timeout = (
            opts.negative_timeout if opts.negative_timeout is not None else opts.entry_timeout
        )
        self._euid, self._egid = os.geteuid(), os.getegid()

    # -- set-up ----------------------------------------------------------------------------------

    def close(self) -> None:
        self.sbi.close()

    def describe(self) -> dict[str, Any]:
        return {
            "branches": [b.describe() for b in self.sbi.branches],
            "workdir": self.sbi.opts.workdir,
            "copyup": self.sbi.opts.copyup,
            "nodes": len(self.sbi.nodes),
            "plinks": len(self.plinks),
            "stats": dict(self.sbi.stats),
            "fastpath": self.fast.describe(),
        }

    # -- helpers ---------------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.sbi.nodes.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    @property
    def plinks(self) -> set[int]:
        """Union inode numbers with a pseudo-link (:class:`~stackfs.union.copy_up.CopyUpper`)."""
        return self.cu.plinks

    def _data_loc(self, node: Node) -> tuple[Branch, Path]:
        """Where the object's data and attributes are (its top branch, or its pseudo-link)."""
        return self.cu.data_loc(node) or (self.sbi.branches[node.top], node.path(node.top))

    def _nlink(self, node_uino: int, st: os.stat_result, layers: int) -> int:
        if stat_mod.S_ISDIR(st.st_mode):
            return 1 if layers > 1 else st.st_nlink
        return self.cu.nlink(node_uino, st)

    def _attr(self, st: os.stat_result, uino: int, layers: int = 1) -> pyfuse3.EntryAttributes:
        return entry_attributes(
            st, uino, self.entry_timeout, self.attr_timeout, self._nlink(uino, st, layers)
        )

    def _stat_node(self, node: Node) -> os.stat_result:
        if node.unlinked and node.fds and not node.plink:
            for fd in node.fds:  # unlinked while open: its name may be someone else's now
                return os.fstat(fd)
        br, path = self._data_loc(node)
        st = br.lstat(path)
        if st is not None and not self._is_object(node, br, st):
            st = None  # removed: another object took the name (the kernel still holds this one)
        if st is None:
            # the name went behind the union's back: another name of a hard link may do
            for p, name in reversed(node.aliases):
                alt = br.lstat(p.path(node.top) + (name,))
                if alt is not None and self.sbi.xino.uino(node.top, alt.st_ino) == node.uino:
                    node.add_name(p, name)
                    return alt
            for fd in node.fds:
                return os.fstat(fd)
            raise OSError(errno.ENOENT, "gone from its branch")
        return st

    def _is_object(self, node: Node, br: Branch, st: os.stat_result) -> bool:
        """Is ``st``, found at ``node``'s path in ``br``, ``node``'s object? A name removed
        through the union is another object's by now, or a whiteout, possibly on the same
        inode number (ext4 reuses a freed one at once): answering for it would hand the
        kernel another object's attributes under this node id (a type change is
        ``fuse_make_bad``: EIO for good)."""
        if node.parent is None or br is not self.sbi.branches[node.top]:
            return True  # the root; a pseudo-link
        if node.unlinked or whiteout.is_ovl_whiteout(st):
            return False
        return self.sbi.xino.uino(node.top, st.st_ino) == node.uino

    def _orphan_fd(self, node: Node) -> int | None:
        """An open fd of ``node`` if it has no name left in the branches (unlinked while open,
        not pseudo-linked): calls that would go by path go through it."""
        if node.unlinked and node.fds and not node.plink:
            return next(iter(node.fds))
        return None

    async def _getattr_node(self, node: Node) -> pyfuse3.EntryAttributes:
        br, _ = self._data_loc(node)
        if br.blocking:
            st = await in_worker(self._stat_node, node)
        else:
            st = self._stat_node(node)
        return self._attr(st, node.uino, len(node.layers))

    def _node_from_found(self, parent: Node, name: bytes, f: Found) -> Node:
        top = f.layers[0]
        uino = self.sbi.xino.uino(top, f.st.st_ino)
        plink = top != 0 and uino in self.plinks
        return Node(uino, parent, name, f.st.st_mode, f.layers, f.redirect, plink)

    async def _lookup(self, parent: Node, name: bytes, first: int = 0) -> Found | None:
        if not parent.resolved:
            await self.sbi.resolve(parent)
        self.sbi.stats["lookup"] += 1
        if self.sbi.blocking_max >= parent.layers[0]:
            return await in_worker(lookup_child, self.sbi.branches, parent, name, first)
        return lookup_child(self.sbi.branches, parent, name, first)

    async def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Register ``node`` (one kernel lookup) and return its entry attributes."""
        node = self.sbi.nodes.add(node)
        return await self._getattr_node(node)

    def init(self) -> None:
        """pyfuse3: the FUSE session is up (notifications to the kernel work from now on)."""
        self.sbi.live = True
        if self.sbi.opts.read_ahead_kb and self.fast.no_open:
            fastpath.raise_read_ahead_after_init(self.sbi.opts.read_ahead_kb)

    def _name_gone(self, parent: Node, name: bytes) -> None:
        """``name`` left ``parent`` through the union: streams open on ``parent`` must not
        return it any more (readdirplus would give the kernel a dentry for a deleted name)."""
        if parent.opened > 0:
            self._gone.setdefault(parent.uino, {})[name] = time.monotonic_ns()

    # -- copy-up: stackfs.union.copy_up.CopyUpper (these two names are what handlers call) --

    async def copy_up_dir(self, node: Node) -> None:
        """Give directory ``node`` an upper directory, parents first (aufs ``au_cpup_dirs``)."""
        await self.cu.copy_up_dir(node)

    async def copy_up(self, node: Node) -> None:
        """Copy a non-directory up before it is modified (aufs ``au_sio_cpup_simple``)."""
        await self.cu.copy_up(node)

    # -- lookup and attributes -------------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            return await self._entry(
                Node(
                    parent.uino,
                    parent.parent,
                    parent.name,
                    parent.mode,
                    parent.layers,
                    parent.redirect,
                    parent.plink,
                    parent.resolved,
                )
            )
        if name == b"..":
            p = parent.parent or parent
            return await self._entry(
                Node(p.uino, p.parent, p.name, p.mode, p.layers, p.redirect, p.plink, p.resolved)
            )
        whiteout.check_name(name)
        f = await self._lookup(parent, name)
        if f is None:
            return negative_entry(self.negative_timeout)
        node = self.sbi.nodes.add(self._node_from_found(parent, name, f))
        if node.plink:
            return await self._getattr_node(node)
        return self._attr(f.st, node.uino, len(f.layers))

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        for ino, n in inode_list:
            self.sbi.nodes.forget(ino, n)
            if -ino in self.handles or -ino in self.dirs:
                node = self.sbi.nodes.get(ino)
                if node is not None and node.nlookup <= 0:
                    self._drop_inode_handles(node)

    @fuse_errors
    async def getattr(
        self, inode: InodeT, ctx: RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return await self._getattr_node(self._node(inode))

    @fuse_errors
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.unlinked and node.is_dir:
            # removed: no name reaches it (a copy-up would make it again, under its whiteout)
            raise OSError(errno.ENOENT, "removed")
        await self.copy_up(node)
        upper, path = self._data_loc(node)
        h = self.handles.get(fh) if fh is not None else None
        ofd = self._orphan_fd(node)
        if ofd is not None:
            # unlinked while open (a write that kills suid, fchmod, ftruncate): no name is left
            await branch_call(
                upper.blocking, _setattr_fd, ofd if h is None else h.fd, attr, fields, node.mode
            )
            self.sbi.attrs_changed(node)
            return await self._getattr_node(node)

        def apply() -> None:
            st0 = upper.lstat(path)
            if st0 is None or not self._is_object(node, upper, st0):
                raise OSError(errno.ENOENT, "removed: its name is another object's")
            if fields.update_size:
                if h is not None:
                    os.ftruncate(h.fd, attr.st_size)
                else:
                    fd = upper.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                    try:
                        os.ftruncate(fd, attr.st_size)
                    finally:
                        os.close(fd)
            if fields.update_uid or fields.update_gid:
                upper.chown(
                    path,
                    attr.st_uid if fields.update_uid else -1,
                    attr.st_gid if fields.update_gid else -1,
                )
            if fields.update_mode and not stat_mod.S_ISLNK(node.mode):
                upper.chmod(path, stat_mod.S_IMODE(attr.st_mode))
            if fields.update_atime or fields.update_mtime:
                st = upper.stat(path)
                upper.utime(
                    path,
                    (
                        attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                        attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                    ),
                )

        with calls("notify_change", "aufs_setattr"):
            await branch_call(upper.blocking, apply)
        self.sbi.attrs_changed(node)
        return await self._getattr_node(node)

    @fuse_errors
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        node = self._node(inode)
        br, path = self._data_loc(node)
        return await branch_call(br.blocking, br.readlink, path)

    # -- creating names --------------------------------------------------------------------------

    def _owner(self, parent: Node, ctx: RequestContext) -> tuple[int, int]:
        gid = ctx.gid
        if parent.mode & stat_mod.S_ISGID:
            gid = -1  # the kernel gave it the directory's group (BSD group semantics)
        return ctx.uid, gid

    async def _create(
        self,
        parent: Node,
        name: bytes,
        ctx: RequestContext,
        make: Callable[[Branch, Path], Any],
        is_dir: bool = False,
    ) -> tuple[Node, os.stat_result, Any]:
        """Create ``name`` in the upper copy of ``parent`` with ``make(upper, path)``; remove a
        whiteout there (a directory made over one is opaque). Returns (node, stat, make's result).
        """
        whiteout.check_name(name)
        upper = self.sbi.need_upper()
        await self.copy_up_dir(parent)
        ppath = parent.path(0)
        check_wh = len(parent.layers) > 1 or parent.redirect is not None
        assert self.sbi.work is not None
        work = self.sbi.work

        def do() -> tuple[os.stat_result, Any]:
            had_wh = check_wh and whiteout.has_whiteout(upper, ppath, name)
            if had_wh:
                whiteout.free_name(upper, ppath, name)
            path = ppath + (name,)
            uid, gid = self._owner(parent, ctx)
            if is_dir and had_wh:
                pst = upper.stat(ppath)
                # build the opaque directory in the work dir, then move it over the whiteout
                tmp: Path = (TMP_DIR, f"mk.{os.getpid()}.{id(path)}".encode())
                res = make(work, tmp)
                whiteout.make_opaque(work, tmp)
                work.chown(tmp, uid, gid if gid != -1 else pst.st_gid)
                if pst.st_mode & stat_mod.S_ISGID:
                    st0 = work.stat(tmp)
                    work.chmod(tmp, stat_mod.S_IMODE(st0.st_mode) | stat_mod.S_ISGID)
                if upper.exists(path):
                    rmtree(work, tmp)
                    raise OSError(errno.EEXIST, "exists")
                work.rename(tmp, upper, path)
            else:
                res = make(upper, path)
                if uid != self._euid or gid not in (-1, self._egid):
                    upper.chown(path, uid, gid)
            if had_wh:
                whiteout.remove_whiteout(upper, ppath, name)
            st = upper.stat(path)
            self.sbi.xino.drop_override(st.st_ino)
            return st, res

        with calls("vfs_create", "aufs_create"):
            st, res = await branch_call(upper.blocking, do)
        uino = self.sbi.xino.natural(0, st.st_ino)
        if self.sbi.nodes.get(uino) is not None:
            # the upper reused the inode number of a removed object the kernel still holds
            # under this node id (fuse_iget would take its dead inode): a number of its own
            uino = self.sbi.xino.renumber(st.st_ino)
        node = Node(uino, parent, name, st.st_mode, (0,))
        self.sbi.dir_modified(parent)
        return node, st, res

    @fuse_errors
    async def mknod(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat_mod.S_ISCHR(mode) and rdev == 0:
            # a 0/0 character device is a whiteout in every branch: overlayfs' ovl_mknod
            # refuses it to root too (EPERM); a plain filesystem lets anyone make one (5.8+)
            raise OSError(errno.EPERM, "a 0/0 character device is a whiteout")
        parent = self._node(parent_inode)
        node, st, _ = await self._create(parent, name, ctx, lambda br, p: br.mknod(p, mode, rdev))
        node = self.sbi.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        node, st, _ = await self._create(
            parent, name, ctx, lambda br, p: br.mkdir(p, mode), is_dir=True
        )
        node = self.sbi.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def symlink(
        self, parent_inode: InodeT, name: FileNameT, target: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        node, st, _ = await self._create(parent, name, ctx, lambda br, p: br.symlink(target, p))
        node = self.sbi.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def create(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT, ctx: RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.fast.no_open:
            # fc->no_create: the kernel makes the file with MKNOD and opens it without OPEN,
            # so no RELEASE follows either (one request less per created file)
            raise pyfuse3.FUSEError(errno.ENOSYS)
        parent = self._node(parent_inode)
        oflags = (flags & ~os.O_NOCTTY) | os.O_CREAT | os.O_EXCL

        def make(br: Branch, p: Path) -> int:
            return br.open(p, oflags, mode)

        node, st, fd = await self._create(parent, name, ctx, make)
        node = self.sbi.nodes.add(node)
        self._add_handle(
            fd, node, self.sbi.need_upper().blocking, (flags & os.O_ACCMODE) != os.O_RDONLY
        )
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._attr(st, node.uino)

    @fuse_errors
    async def link(
        self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        whiteout.check_name(new_name)
        node = self._node(inode)
        parent = self._node(new_parent_inode)
        upper = self.sbi.need_upper()
        await self.copy_up(node)
        await self.copy_up_dir(parent)
        src = node.path(0)
        ppath = parent.path(0)
        check_wh = len(parent.layers) > 1 or parent.redirect is not None

        def do() -> os.stat_result:
            had_wh = check_wh and whiteout.has_whiteout(upper, ppath, new_name)
            if had_wh:
                whiteout.free_name(upper, ppath, new_name)
            upper.link(src, upper, ppath + (new_name,))
            if had_wh:
                whiteout.remove_whiteout(upper, ppath, new_name)
            return upper.stat(ppath + (new_name,))

        st = await branch_call(upper.blocking, do)
        self.sbi.dir_modified(parent)
        self.sbi.attrs_changed(node)
        new = self.sbi.nodes.add(Node(node.uino, parent, new_name, st.st_mode, (0,)))
        return self._attr(st, new.uino)

    # -- removing names --------------------------------------------------------------------------

    def _is_empty(self, node: Node) -> bool:
        layers = [(b, node.path(b)) for b in node.layers]
        return not rd.merge(self.sbi.branches, layers)

    @fuse_errors
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self._node(parent_inode)
        upper = self.sbi.need_upper()
        f = await self._lookup(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such entry")
        if stat_mod.S_ISDIR(f.st.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        uino = self.sbi.xino.uino(f.layers[0], f.st.st_ino)
        await self.copy_up_dir(parent)
        ppath = parent.path(0)
        top = f.layers[0]
        # hiding one lower name of a hard link: the pseudo-link counts the names left
        counted = await self.cu.hide_lower_name(self._node_from_found(parent, name, f), f.st)
        await self._pin_open_data(uino, top)

        def do() -> None:
            below = lookup_child(self.sbi.branches, parent, name, 1)
            wh_first = below is not None and not whiteout.takes_name(upper)
            if wh_first:
                whiteout.make_whiteout(upper, ppath, name)
            if top == 0:
                upper.unlink(ppath + (name,))
                if f.st.st_nlink <= 1 and uino not in self.plinks:
                    self.sbi.xino.drop_override(f.st.st_ino)
            if below is not None and not wh_first:
                whiteout.make_whiteout(upper, ppath, name)
            if top != 0 and not counted and uino in self.plinks:
                self.cu.lower_name_gone(uino)
            else:
                self.cu.gc_plink(uino)

        with calls("vfs_unlink", "aufs_unlink"):
            await branch_call(self.sbi.blk_from(parent.top), do)
        node = self.sbi.nodes.get(uino)
        if node is not None:
            await self._name_removed(node, parent, name)
            if not node.unlinked:
                # st_nlink and st_ctime of the other names moved (the last name gone: the
                # kernel's fuse_unlink drops the inode's nlink and its cached attributes itself)
                self.sbi.inval_attrs(node)
        self.sbi.dir_modified(parent)
        self._name_gone(parent, name)

    async def _name_removed(self, node: Node, parent: Node, name: bytes) -> None:
        """``parent/name`` of ``node`` is gone (unlink, renamed over): reach the object through
        another name the kernel holds a dentry for (its layers may differ: a lower name of a
        pseudo-linked file), or mark it unlinked if none is left (``d_delete`` of the last
        alias)."""
        while True:
            primary = node.parent is parent and node.name == name
            if node.drop_name(parent, name):
                node.unlinked = True
                return
            if not primary:
                return
            assert node.parent is not None
            f = await self._lookup(node.parent, node.name)
            if f is not None and self.sbi.xino.uino(f.layers[0], f.st.st_ino) == node.uino:
                node.layers, node.redirect, node.resolved = f.layers, f.redirect, True
                node.plink = f.layers[0] != 0 and node.uino in self.plinks
                return
            parent, name = node.parent, node.name  # that name is stale too

    @fuse_errors
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self._node(parent_inode)
        upper = self.sbi.need_upper()
        f = await self._lookup(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such entry")
        if not stat_mod.S_ISDIR(f.st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        probe = self._node_from_found(parent, name, f)
        blk = self.sbi.blk_from(parent.top)
        if not await branch_call(blk, self._is_empty, probe):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        await self.copy_up_dir(parent)
        ppath = parent.path(0)

        def do() -> None:
            below = lookup_child(self.sbi.branches, parent, name, 1)
            wh_first = below is not None and not whiteout.takes_name(upper)
            if wh_first:
                whiteout.make_whiteout(upper, ppath, name)
            if f.layers[0] == 0:
                whiteout.clear_dir(upper, ppath + (name,))
                upper.rmdir(ppath + (name,))
            if below is not None and not wh_first:
                whiteout.make_whiteout(upper, ppath, name)

        with calls("vfs_rmdir", "aufs_rmdir"):
            await branch_call(blk, do)
        node = self.sbi.nodes.get(probe.uino)
        if node is not None:
            node.unlinked = True
        self.sbi.dir_modified(parent)
        self._name_gone(parent, name)

    # -- rename ----------------------------------------------------------------------------------

    async def _prepare_move(self, node: Node) -> None:
        """Make ``node`` movable within the upper branch: copy a file up; give a directory an
        upper directory and, if lower branches hold parts of it, a redirect to where they see
        it, so the upper directory can move anywhere and take its lower parts along."""
        upper = self.sbi.need_upper()
        if not node.is_dir:
            await self.copy_up(node)
            return
        await self.sbi.resolve(node)
        lower = [b for b in node.layers if b != 0]
        await self.copy_up_dir(node)
        if lower and (node.redirect is None or node.redirect[0] != 0):
            target = node.path(lower[0])
            path = node.path(0)
            await branch_call(upper.blocking, whiteout.write_redirect, upper, path, target)
            node.redirect = (0, target)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: RequestContext,
    ) -> None:
        whiteout.check_name(name_new)
        upper = self.sbi.need_upper()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "bad rename flags")
        old_p = self._node(parent_inode_old)
        new_p = self._node(parent_inode_new)
        # no copy-up of another task runs while the branch paths move (renamegate)
        async with self.cu.gate.exclusive():
            found_old = await self._lookup(old_p, name_old)
            if found_old is None:
                raise OSError(errno.ENOENT, "no such entry")
            found_new = await self._lookup(new_p, name_new)
            if found_new is not None and not flags & RENAME_EXCHANGE:
                uino = self.sbi.xino.uino(found_new.layers[0], found_new.st.st_ino)
                await self._pin_open_data(uino, found_new.layers[0])
            src = self.sbi.nodes.add(self._node_from_found(old_p, name_old, found_old))
            try:
                await self._rename(
                    src, found_old, old_p, name_old, new_p, name_new, found_new, flags, upper
                )
            finally:
                self.sbi.nodes.forget(src.uino, 1)
                self.sbi.dir_modified(old_p, new_p)

    async def _rename(
        self,
        src: Node,
        found_old: Found,
        old_p: Node,
        name_old: bytes,
        new_p: Node,
        name_new: bytes,
        found_new: Found | None,
        flags: int,
        upper: Branch,
    ) -> None:
        """Rename ``old_p/name_old`` (node ``src``, found as ``found_old``) to ``new_p/name_new``
        (``found_new``: what is there now) in the upper branch (``vfs_rename`` ->
        ``aufs_rename``, overlayfs ``ovl_rename``), under the rename gate."""
        exchange = bool(flags & RENAME_EXCHANGE)
        src_dir = stat_mod.S_ISDIR(found_old.st.st_mode)
        dst: Node | None = None
        if found_new is not None:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "target exists")
            dst = self.sbi.nodes.add(self._node_from_found(new_p, name_new, found_new))
        elif exchange:
            raise OSError(errno.ENOENT, "no target to exchange with")
        try:
            if dst is not None and dst.uino == src.uino and not exchange:
                return  # two names of one inode: POSIX says do nothing
            dst_dir = dst is not None and dst.is_dir
            if dst is not None and not exchange:
                if src_dir and not dst_dir:
                    raise OSError(errno.ENOTDIR, "target is not a directory")
                if not src_dir and dst_dir:
                    raise OSError(errno.EISDIR, "target is a directory")
                if dst_dir:
                    await self.sbi.resolve(dst)
                    if not await branch_call(self.sbi.blk_from(dst.top), self._is_empty, dst):
                        raise OSError(errno.ENOTEMPTY, "target directory not empty")
            await self.copy_up_dir(old_p)
            await self.copy_up_dir(new_p)
            await self._prepare_move(src)
            if exchange:
                assert dst is not None
                await self._prepare_move(dst)
            dst_counted = False
            if dst is not None and not exchange and found_new is not None:
                dst_counted = await self.cu.hide_lower_name(dst, found_new.st)
            old_pp, new_pp = old_p.path(0), new_p.path(0)
            src_redirected = src.redirect is not None and src.redirect[0] == 0

            def do() -> None:
                had_wh = whiteout.has_whiteout(upper, new_pp, name_new)
                if had_wh:
                    whiteout.free_name(upper, new_pp, name_new)
                if dst is not None and not exchange and dst_dir and 0 in dst.layers:
                    whiteout.clear_dir(upper, dst.path(0))
                if exchange:
                    upper.rename(old_pp + (name_old,), upper, new_pp + (name_new,), RENAME_EXCHANGE)
                    return
                # the name below the upper, merged into the target or hidden by it (an opaque
                # target: its layers do not show it), must stay hidden (ovl_rename's opaque)
                if src_dir and not src_redirected:
                    if had_wh or lookup_child(self.sbi.branches, new_p, name_new, 1) is not None:
                        whiteout.make_opaque(upper, old_pp + (name_old,))
                upper.rename(
                    old_pp + (name_old,), upper, new_pp + (name_new,), flags & RENAME_NOREPLACE
                )
                if had_wh:
                    whiteout.remove_whiteout(upper, new_pp, name_new)
                if lookup_child(self.sbi.branches, old_p, name_old, 1) is not None:
                    whiteout.make_whiteout(upper, old_pp, name_old)

            with calls("vfs_rename", "aufs_rename"):
                await branch_call(self.sbi.blk_from(min(old_p.top, new_p.top)), do)
            if not exchange:
                self._name_gone(old_p, name_old)
            # the moved nodes now live at their new names: look them up again
            moved = [(src, new_p, name_new)]
            if exchange:
                assert dst is not None
                moved.append((dst, old_p, name_old))
            elif dst is not None:
                if dst.uino in self.plinks and self.sbi.work is not None:
                    lower = found_new is not None and found_new.layers[0] != 0 and not dst_counted
                    gone = self.cu.lower_name_gone if lower else self.cu.gc_plink
                    await branch_call(self.sbi.work.blocking, gone, dst.uino)
                await self._name_removed(dst, new_p, name_new)
                self.sbi.inval_attrs(dst)
            for (n, p, name), (op, oname) in zip(
                moved, [(old_p, name_old), (new_p, name_new)], strict=False
            ):
                n.rename_name(op, oname, p, name)
                f = await self._lookup(p, name)
                if f is not None:
                    n.layers, n.redirect, n.mode, n.resolved = (
                        f.layers,
                        f.redirect,
                        f.st.st_mode,
                        True,
                    )
                    n.plink = False
        finally:
            if dst is not None:
                self.sbi.nodes.forget(dst.uino, 1)

    # -- files -----------------------------------------------------------------------------------

    def _add_handle(self, fd: int, node: Node, blocking: bool, writable: bool = False) -> None:
        self.handles[fd] = BranchFile(fd, node, blocking, writable)
        node.opened += 1
        node.add_fd(fd)

    @fuse_errors
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> pyfuse3.FileInfo:
        if self.fast.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # fc->no_open: I/O comes by inode from now
        node = self._node(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            await self.copy_up(node)
        br, path = self._data_loc(node)
        oflags = fastpath.open_flags(flags, self.fast.writeback_cache)
        with calls("do_dentry_open", "aufs_open_nondir"):
            fd = await branch_call(br.blocking, br.open, path, oflags)
        self._add_handle(fd, node, br.blocking, bool(writing))
        if writing:
            self.sbi.attrs_changed(node)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @fuse_errors
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if h is None or h.loc is not None:
            h = await self._inode_handle(fh, False)
        if h.blocking:
            return await in_worker(os.pread, h.fd, size, off)
        return os.pread(h.fd, size, off)

    @fuse_errors
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        h = self.handles.get(fh)
        if h is None or h.loc is not None:
            h = await self._inode_handle(fh, True)
            self.sbi.attrs_changed(h.node)
        if h.blocking:
            return await in_worker(os.pwrite, h.fd, buf, off)
        return os.pwrite(h.fd, buf, off)

    async def _inode_handle(self, fh: int, writing: bool) -> BranchFile:
        """The branch fd of a request that came by inode (``no_open``): opened at the first
        read or write and kept until FORGET; the first write copies the file up (copy-up at
        open is what ``no_open=off`` keeps)."""
        ino = fastpath.inode_of(fh)
        if ino is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        h = self.handles.get(fh)
        node = h.node if h is not None else self._node(ino)
        if writing and node.top != 0:
            await self.copy_up(node)
        loc = (node.top, node.plink)
        if h is not None and h.loc == loc and (h.writable or not writing):
            return h
        br, path = self._data_loc(node)
        fd, writable = await branch_call(
            br.blocking,
            fastpath.open_data,
            br,
            path,
            writing or br is self.sbi.upper or br is self.sbi.work,
        )
        if writing and not writable:
            os.close(fd)
            raise OSError(errno.EACCES, "the file's data cannot be opened for writing")
        if h is not None:
            self._close_inode_handle(h)
        h = self.handles[fh] = BranchFile(fd, node, br.blocking, writable, loc)
        node.opened += 1
        node.add_fd(fd)
        self._inode_files[fh] = None
        if len(self._inode_files) > fastpath.MAX_INODE_FILES:
            self._close_oldest_inode_files()
        return h

    def _close_oldest_inode_files(self) -> None:
        """Keep the fds of by-inode files bounded: close the oldest (they are opened again at
        the next read or write), but not those of unlinked files (their data is only there)
        nor those over a FUSE branch (a worker thread may be in a read on it)."""
        for fh in list(itertools.islice(self._inode_files, fastpath.MAX_INODE_FILES // 4)):
            # every one leaves the order, so the next call does not walk them again: those
            # kept open are closed at FORGET (_drop_inode_handles), as before
            del self._inode_files[fh]
            h = self.handles.get(fh)
            if h is not None and not h.node.unlinked and not h.blocking:
                del self.handles[fh]
                self._close_inode_handle(h)
                self.sbi.nodes.closed(h.node)

    async def _pin_open_data(self, uino: int, top: int) -> None:
        """``no_open``: before an upper file's name goes (unlink, renamed over), keep its data
        reachable by a branch fd until FORGET: the kernel's inode may be open, and no OPEN
        told the union (the kernel keeps an unlinked open file's inode, the union its data)."""
        node = self.sbi.nodes.get(uino)
        if self.fast.no_open and top == 0 and node is not None and stat_mod.S_ISREG(node.mode):
            await self._inode_handle(-uino, False)

    def _close_inode_handle(self, h: BranchFile) -> None:
        h.node.opened -= 1
        h.node.discard_fd(h.fd)
        os.close(h.fd)

    def _drop_inode_handles(self, node: Node) -> None:
        """FORGET of ``node``: close its fd and directory handle by inode."""
        h = self.handles.pop(-node.uino, None)
        self._inode_files.pop(-node.uino, None)
        if h is not None:
            self._close_inode_handle(h)
        dh = self.dirs.pop(-node.uino, None)
        if dh is not None:
            node.opened -= 1
            self._gone.pop(node.uino, None)
        self.sbi.nodes.closed(node)

    # no flush(): the base class answers ENOSYS once and the kernel stops sending FLUSH at
    # every close(2) (fc->no_flush); release closes the branch fd.

    @fuse_errors
    async def release(self, fh: FileHandleT) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        h.node.opened -= 1
        h.node.discard_fd(fh)
        if h.writable:
            self.sbi.attrs_changed(h.node)
        self.sbi.nodes.closed(h.node)
        if h.blocking:
            await in_worker(os.close, fh)
        else:
            os.close(fh)

    @fuse_errors
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        h = self.handles.get(fh)
        if h is None or h.loc is not None:
            h = await self._inode_handle(fh, False)
        await branch_call(h.blocking, os.fdatasync if datasync else os.fsync, h.fd)

    # -- directories -----------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        if self.fast.no_opendir:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # fc->no_opendir: readdir comes by inode
        node = self._node(inode)
        await self.sbi.resolve(node)
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = MergedDirHandle(node)
        node.opened += 1
        if self.fast.cache_dir:
            # FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE: the kernel keeps the listing (patched pyfuse3)
            return pyfuse3.FileInfo(fh=dh, keep_cache=True, cache_readdir=True)  # type: ignore
        return dh

    async def _inode_dir_handle(self, fh: int) -> MergedDirHandle:
        """The directory handle of a READDIRPLUS that came by inode (``no_opendir``)."""
        ino = fastpath.inode_of(fh)
        if ino is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node = self._node(ino)
        await self.sbi.resolve(node)
        dh = self.dirs[fh] = MergedDirHandle(node)
        node.opened += 1
        return dh

    def _listing(self, node: Node) -> rd.Listing:
        layers = [(b, node.path(b)) for b in node.layers]
        made = time.time_ns()
        stamp = rd.layer_stamp(self.sbi.branches, layers)
        listing = self.sbi.listings.get(node.uino, stamp)
        if listing is None:
            listing = self.sbi.listings.put(
                node.uino, stamp, rd.merge(self.sbi.branches, layers), made
            )
        return listing

    def _entry_replies(self, node: Node, entries: list[rd.Entry]) -> list[rd.Reply | None]:
        """The readdirplus replies of ``entries`` of ``node`` (:func:`readdir.make_replies`)."""
        return rd.make_replies(
            self.sbi.branches,
            node,
            entries,
            uino_of=self.sbi.xino.uino,
            plink_stat=self._plink_stat if self.plinks else None,
            attr=self._attr,
        )

    def _plink_stat(self, uino: int) -> os.stat_result | None:
        if uino not in self.plinks or self.sbi.work is None:
            return None
        return self.sbi.work.lstat(plink_path(uino))

    @fuse_errors
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        dh = self.dirs.get(fh) or await self._inode_dir_handle(fh)
        node = dh.node
        blk = self.sbi.blk_from(node.top)
        if dh.listing is None or start_id == 0:
            dh.made = time.monotonic_ns()
            with calls("iterate_dir", "aufs_iterate_shared"):
                dh.listing = await branch_call(blk, self._listing, node)
        listing = dh.listing
        entries = listing.entries
        gone = self._gone.get(node.uino)
        reply = pyfuse3.readdir_reply
        idx = start_id
        if idx == 0:
            a = pyfuse3.EntryAttributes()
            a.st_ino = node.uino
            a.st_mode = stat_mod.S_IFDIR
            if not reply(token, b".", a, 1):
                return
            idx = 1
        if idx == 1:
            p = node.parent or node
            a = pyfuse3.EntryAttributes()
            a.st_ino = p.uino
            a.st_mode = stat_mod.S_IFDIR
            if not reply(token, b"..", a, 2):
                return
            idx = 2
        # the replies of this listing, reused while younger than the attribute timeout
        now = time.monotonic_ns()
        ttl = int(self.attr_timeout * 1e9)
        replies = listing.replies
        if ttl <= 0:
            replies = None
        elif replies is None or now - listing.replies_ns >= ttl:
            replies = listing.replies = [rd.UNSET] * len(entries)
            listing.replies_ns = now
        left = (ttl - (now - listing.replies_ns)) / 1e9 if ttl > 0 else 0.0
        nodes = self.sbi.nodes
        batch = 32
        n = len(entries)
        while idx - 2 < n:
            lo = idx - 2
            hi = min(lo + batch, n)
            batch = 256
            fresh: set[int] | None = None
            if replies is None:
                chunk = await branch_call(blk, self._entry_replies, node, entries[lo:hi])
            else:
                # make the replies not made yet, and those of files open or hard-linked (their
                # attributes may have moved without their directory changing)
                need = [
                    k
                    for k in range(lo, hi)
                    if (r := replies[k]) is rd.UNSET or r is not None and r.may_have_moved(nodes)
                ]
                if need:
                    made = await branch_call(
                        blk, self._entry_replies, node, [entries[k] for k in need]
                    )
                    for k, r in zip(need, made, strict=True):
                        replies[k] = r
                    fresh = set(need)
                self.sbi.stats["readdir_kept"] += hi - lo - len(need)
                chunk = replies[lo:hi]
            for k, r in enumerate(chunk, lo):
                idx += 1
                if r is None:
                    continue  # removed since the listing was made
                name, a = r.name, r.attrs
                if gone and gone.get(name, 0) >= dh.made:
                    continue
                if replies is not None and (fresh is None or k not in fresh):
                    a.attr_timeout = left  # a kept reply: valid no longer than its stat
                if not reply(token, name, a, idx):
                    return
                nodes.add_readdir(r.uino, node, name, r.mode, r.branch, r.plink)

    @fuse_errors
    async def releasedir(self, fh: FileHandleT) -> None:
        dh = self.dirs.pop(fh, None)
        if dh is not None:
            dh.node.opened -= 1
            if dh.node.opened <= 0:
                self._gone.pop(dh.node.uino, None)
            self.sbi.nodes.closed(dh.node)

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    @fuse_errors
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        br = self.sbi.upper or self.sbi.branches[0]
        sv = await branch_call(br.blocking, br.statvfs)
        return statvfs_data(sv, namemax=max(sv.f_namemax - len(whiteout.WH_PREFIX), 1))

    # -- xattrs ----------------------------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: InodeT, name: FileNameT, ctx: RequestContext) -> bytes:
        node = self._node(inode)
        if crosslock.reserved(name):
            return await crosslock.serve_getxattr(lambda: self._i_rwsem(node), name, ctx.pid)
        if os.fsdecode(name).startswith(self.meta_xattrs):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            value: bytes = await self._xattr(node, "getxattr", name)
            return value
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[bytes]:
        node = self._node(inode)
        names = await self._xattr(node, "listxattr")
        # the union's own names never; trusted.* only to root: the daemon lists as root and
        # FUSE passes the list through unfiltered (ext4's and overlayfs' ovl_can_list() hide
        # trusted.* from a caller without CAP_SYS_ADMIN; FUSE tells the fsuid, not the caps)
        hidden = self.meta_xattrs if ctx.uid == 0 else (*self.meta_xattrs, _TRUSTED)
        return [os.fsencode(n) for n in names if not n.startswith(hidden)]

    @fuse_errors
    async def setxattr(
        self, inode: InodeT, name: FileNameT, value: bytes, ctx: RequestContext
    ) -> None:
        node = self._node(inode)
        if crosslock.reserved(name):
            await crosslock.serve_setxattr(lambda: self._i_rwsem(node), name, value, ctx.pid)
            return
        self._check_meta_xattr(name)
        await self.copy_up(node)
        await self._xattr(node, "setxattr", name, value)
        self.sbi.attrs_changed(node)

    @fuse_errors
    async def removexattr(self, inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        node = self._node(inode)
        if crosslock.reserved(name):
            crosslock.serve_removexattr(lambda: self._i_rwsem(node), name, ctx.pid)
            return
        self._check_meta_xattr(name)
        await self.copy_up(node)
        self.sbi.attrs_changed(node)
        try:
            await self._xattr(node, "removexattr", name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    def _check_meta_xattr(self, name: bytes) -> None:
        """Nobody sets or removes the union's own metadata through the union: EPERM, as
        overlayfs answered for ``trusted.overlay.*`` before Linux 6.7 (``ovl_own_xattr_set``;
        6.7 and later store it escaped instead, see docs/security.md)."""
        if os.fsdecode(name).startswith(self.meta_xattrs):
            raise OSError(errno.EPERM, "the union's own metadata")

    async def _xattr(self, node: Node, call: str, *args: Any) -> Any:
        """An xattr syscall (``getxattr``, ``listxattr``, ``setxattr``, ``removexattr``; they have
        no *at() form) on ``node``'s data: by path, or through its fd when it was unlinked while
        open (no name is left)."""
        br, path = self._data_loc(node)
        ofd = self._orphan_fd(node)
        if ofd is not None:
            return await branch_call(br.blocking, getattr(os, call), ofd, *args)
        return await branch_call(br.blocking, getattr(br, call), path, *args)

    # cross-layer lock: a union stacked on this one takes our inode's i_rwsem through an xattr
    def _i_rwsem(self, node: Node) -> RWSem:
        sem = self.kernel.locks.i_rwsem(node.uino, desc=f"{node.describe()} (ino {node.uino})")
        crosslock.release_exited_holders(sem)
        return sem


def _setattr_fd(
    fd: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, mode: int
) -> None:
    """setattr through an open fd (``notify_change`` on an unlinked inode)."""
    if fields.update_size:
        os.ftruncate(fd, attr.st_size)
    if fields.update_uid or fields.update_gid:
        os.fchown(
            fd, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1
        )
    if fields.update_mode and not stat_mod.S_ISLNK(mode):
        os.fchmod(fd, stat_mod.S_IMODE(attr.st_mode))
    if fields.update_atime or fields.update_mtime:
        st = os.fstat(fd)
        os.utime(
            fd,
            ns=(
                attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
            ),
        )
