"""The union filesystem: the pyfuse3 operations of kind ``union`` (aufs' ``aufs_iop``/``aufs_fop``).

One writable upper branch (index 0) over read-only lower branches, or read-only branches only.
Lookup, readdir, copy-up, whiteouts, inode numbers and branch access live in their own modules;
this class ties them to FUSE requests:

* every modification of a lower object copies it up first (:meth:`UnionFS.copy_up`), parents
  first; a copy-up runs in one worker thread (:class:`~stackfs.union.copy_up.CopyUp`);
* unlink/rmdir leave whiteouts where a lower branch still has the name; mkdir over a whiteout
  makes an opaque directory; a lower directory is renamed by moving (or creating) its upper
  directory and recording a redirect, so no file data is copied and there is no EXDEV;
* syscalls on a branch that is a FUSE mount run through :func:`stackfs.daemon.in_worker` (the
  control socket keeps answering while a lower layer is wedged); on plain directories they run
  inline, which is faster.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from stat import S_ISDIR
from typing import Any, TypeVar

import pyfuse3
import trio

from stackfs import crosslock
from stackfs.daemon import TestbedOperations, in_worker
from stackfs.fuseattr import entry_attributes, negative_entry, statvfs_data
from stackfs.kernel.locks import RWSem
from stackfs.kernel.task import calls
from stackfs.union import copy_up as cu
from stackfs.union import readdir as rd
from stackfs.union import whiteout
from stackfs.union.branches import RENAME_EXCHANGE, RENAME_NOREPLACE, Branch, Path
from stackfs.union.inode import Node, NodeTable
from stackfs.union.lookup import Found, lookup_child
from stackfs.union.options import UnionOptions
from stackfs.union.xino import ROOT, Xino

log = logging.getLogger(__name__)
T = TypeVar("T")

_XATTR_CREATE, _XATTR_REPLACE = 1, 2


#: a readdirplus reply not made yet (None: the entry is gone)
_UNSET: Any = object()


def fuse_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an OSError of a handler into the FUSEError that carries its errno."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        try:
            return await fn(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


def _erofs() -> OSError:
    return OSError(errno.EROFS, "read-only union (no upper branch)")


@dataclass(slots=True, eq=False)
class Handle:
    fd: int
    node: Node
    blocking: bool
    writable: bool = False


@dataclass(slots=True, eq=False)
class DirHandle:
    node: Node
    listing: rd.Listing | None = None
    #: when ``listing`` was taken (time.monotonic_ns)
    made: int = 0


class UnionFS(TestbedOperations):
    """aufs-like union of ``opts.branches`` (top first)."""

    kind = "union"

    def __init__(self, opts: UnionOptions) -> None:
        super().__init__()
        self.opts = opts
        from stackfs.union.branches import open_branches

        self.branches: list[Branch] = open_branches([(b.path, b.writable) for b in opts.branches])
        self.upper: Branch | None = self.branches[0] if self.branches[0].writable else None
        self.work: Branch | None = None
        self._work_lock_fd = -1
        self.xino = Xino(None)
        if self.upper is not None:
            assert opts.workdir is not None
            self.work = self._setup_workdir(opts.workdir)
        self.plinks: set[int] = set()
        if self.work is not None:
            for n in self.work.listdir((cu.PLINK_DIR,)):
                if n.isdigit():
                    self.plinks.add(int(n))
        st = self.branches[0].stat(())
        root = Node(ROOT, None, b"", st.st_mode, tuple(range(len(self.branches))))
        self.nodes = NodeTable(root)
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1
        self._cu_locks: dict[int, trio.Lock] = {}
        #: names removed from directories that have open streams: dir uino -> name -> when
        self._gone: dict[int, dict[bytes, int]] = {}
        self.listings = rd.ListingCache()
        self.entry_timeout = opts.entry_timeout
        self.attr_timeout = opts.attr_timeout
        self.negative_timeout = (
            opts.negative_timeout if opts.negative_timeout is not None else opts.entry_timeout
        )
        blocking = [b.index for b in self.branches if b.blocking]
        #: the lowest branch that may block (lookups from a parent whose top is above it do)
        self.blocking_max = max(blocking) if blocking else -1
        self.kernel.inject.declare(
            "copy_up",
            "in copy-up, after the lower file is taken (locked with copyup=aufs) and opened, "
            "before its data is copied",
        )
        self.stats = {"copy_up": 0, "lookup": 0, "readdir_kept": 0}
        self._euid, self._egid = os.geteuid(), os.getegid()
        self._live = False

    # -- set-up ----------------------------------------------------------------------------------

    def _setup_workdir(self, path: str) -> Branch:
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
        for d in (cu.TMP_DIR, cu.PLINK_DIR):
            try:
                w.mkdir((d,), 0o700)
            except FileExistsError:
                pass
        if not w.stat((cu.TMP_DIR,)).st_mode & stat_mod.S_ISGID:
            w.new_owner = (os.geteuid(), os.getegid())
        # what a SIGKILL left in the middle of a copy-up: never visible, now garbage
        for n in w.listdir((cu.TMP_DIR,)):
            st = w.lstat((cu.TMP_DIR, n))
            if st is not None:
                self.xino.drop_override(st.st_ino)  # its number may be reused
            try:
                if st is not None and stat_mod.S_ISDIR(st.st_mode):
                    _rmtree(w, (cu.TMP_DIR, n))
                else:
                    w.unlink((cu.TMP_DIR, n))
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

    def describe(self) -> dict[str, Any]:
        return {
            "branches": [b.describe() for b in self.branches],
            "workdir": self.opts.workdir,
            "copyup": self.opts.copyup,
            "nodes": len(self.nodes),
            "plinks": len(self.plinks),
            "stats": dict(self.stats),
        }

    # -- helpers ---------------------------------------------------------------------------------

    async def _sys(self, blocking: bool, fn: Callable[..., T], *args: Any) -> T:
        """Run branch syscalls: in a worker thread if a FUSE branch is involved, else inline."""
        if blocking:
            return await in_worker(fn, *args)
        return fn(*args)

    def _blk(self, bi: int) -> bool:
        return bi >= 0 and self.branches[bi].blocking

    def _blk_from(self, bi: int) -> bool:
        """Does a walk over branch ``bi`` and those below touch a FUSE branch?"""
        return self.blocking_max >= bi

    def _node(self, ino: int) -> Node:
        node = self.nodes.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _need_upper(self) -> Branch:
        if self.upper is None:
            raise _erofs()
        return self.upper

    def _data_loc(self, node: Node) -> tuple[Branch, Path]:
        """Where the object's data and attributes are (its top branch, or its pseudo-link)."""
        if node.plink and node.top != 0 and self.work is not None:
            return self.work, (cu.PLINK_DIR, str(node.uino).encode())
        return self.branches[node.top], node.path(node.top)

    def _nlink(self, node_uino: int, st: os.stat_result, layers: int) -> int:
        if stat_mod.S_ISDIR(st.st_mode):
            return 1 if layers > 1 else st.st_nlink
        if node_uino in self.plinks:
            return max(st.st_nlink - 1, 0) + self.xino.get_lower_names(node_uino)
        return st.st_nlink

    def _attr(self, st: os.stat_result, uino: int, layers: int = 1) -> pyfuse3.EntryAttributes:
        return entry_attributes(st, uino, self.entry_timeout, self.attr_timeout,
                                self._nlink(uino, st, layers))

    def _stat_node(self, node: Node) -> os.stat_result:
        if node.unlinked and node.fds and not node.plink:
            for fd in node.fds:  # unlinked while open: its name may be someone else's now
                return os.fstat(fd)
        br, path = self._data_loc(node)
        st = br.lstat(path)
        if st is None:
            for fd in node.fds:
                return os.fstat(fd)
            raise OSError(errno.ENOENT, "gone from its branch")
        return st

    async def _getattr_node(self, node: Node) -> pyfuse3.EntryAttributes:
        br, _ = self._data_loc(node)
        if br.blocking:
            st = await in_worker(self._stat_node, node)
        else:
            st = self._stat_node(node)
        return self._attr(st, node.uino, len(node.layers))

    def _node_from_found(self, parent: Node, name: bytes, f: Found) -> Node:
        top = f.layers[0]
        uino = self.xino.uino(top, f.st.st_ino)
        plink = top != 0 and uino in self.plinks
        return Node(uino, parent, name, f.st.st_mode, f.layers, f.redirect, plink)

    async def _lookup(self, parent: Node, name: bytes, first: int = 0) -> Found | None:
        if not parent.resolved:
            await self._resolve(parent)
        self.stats["lookup"] += 1
        if self.blocking_max >= parent.layers[0]:
            return await in_worker(lookup_child, self.branches, parent, name, first)
        return lookup_child(self.branches, parent, name, first)

    async def _resolve(self, node: Node) -> None:
        """Make sure directory ``node`` knows its layers (readdirplus nodes do not yet)."""
        if node.resolved or node.parent is None:
            return
        await self._resolve(node.parent)
        f = await self._sys(
            self._blk_from(node.parent.top), lookup_child, self.branches, node.parent, node.name, 0
        )
        if f is None:
            raise OSError(errno.ENOENT, "directory vanished from its branches")
        node.layers, node.redirect, node.mode = f.layers, f.redirect, f.st.st_mode
        node.resolved = True

    async def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Register ``node`` (one kernel lookup) and return its entry attributes."""
        node = self.nodes.add(node)
        return await self._getattr_node(node)

    def _hit_from_thread(self, point: str) -> None:
        p = self.kernel.inject[point]
        if p.action.kind == "off":
            p.hits += 1  # what hit() does for a point that is off, without the trip to trio
            return
        trio.from_thread.run(self.kernel.inject.hit, point)

    def init(self) -> None:
        """pyfuse3: the FUSE session is up (notifications to the kernel work from now on)."""
        self._live = True

    def _inval_attrs(self, node: Node) -> None:
        """Drop the kernel's cached attributes of ``node`` after the union changed them behind
        its back (attributes only: no page-cache invalidation, so no inode lock is taken and
        it is safe inside a request handler)."""
        if not self._live:
            return
        try:
            pyfuse3.invalidate_inode(node.uino, attr_only=True)
        except OSError:
            pass  # the kernel does not hold this inode

    def _hit_inline(self, point: str) -> None:
        self.kernel.inject[point].hits += 1  # only used while the point is off

    def _copy_up_inline(self, job: cu.CopyUp) -> bool:
        """May ``job`` run in the trio thread? Only between plain directories (no FUSE branch
        that could block, no cross-layer lock), for a small file, with the ``copy_up``
        injection point off: a copy-up that can wait on another layer, or that a reproducer
        stops at its injection point, keeps its own worker thread."""
        if job.src.blocking or job.upper.blocking or job.work.blocking:
            return False
        if self.kernel.inject["copy_up"].action.kind != "off":
            return False
        st = job.src.lstat(job.src_path)
        if st is None or st.st_size > cu.INLINE_MAX:
            return False
        job.st_hint = st
        return True

    def _cu_lock(self, uino: int) -> trio.Lock:
        lock = self._cu_locks.get(uino)
        if lock is None:
            lock = self._cu_locks[uino] = trio.Lock()
        return lock

    def _changed(self, *dirs: Node) -> None:
        """The entries of ``dirs`` changed: drop their listings, and the replies their parents
        keep for them (a directory's mtime, ctime and st_nlink moved)."""
        for d in dirs:
            self.listings.invalidate(d.uino)
            self._attrs_changed(d)

    def _attrs_changed(self, node: Node) -> None:
        """``node``'s attributes changed through the union: its directory's cached readdirplus
        replies must not hand out the old ones."""
        if node.parent is not None:
            self.listings.drop_replies(node.parent.uino)

    def _name_gone(self, parent: Node, name: bytes) -> None:
        """``name`` left ``parent`` through the union: streams open on ``parent`` must not
        return it any more (readdirplus would give the kernel a dentry for a deleted name)."""
        if parent.opened > 0:
            self._gone.setdefault(parent.uino, {})[name] = time.monotonic_ns()

    # -- copy-up ---------------------------------------------------------------------------------

    async def copy_up_dir(self, node: Node) -> None:
        """Give directory ``node`` an upper directory, parents first (aufs ``au_cpup_dirs``)."""
        upper = self._need_upper()
        if node.parent is None:
            return
        await self._resolve(node)
        if node.layers[0] == 0:
            return
        async with self._cu_lock(node.uino):
            if node.layers[0] == 0:
                return
            await self.copy_up_dir(node.parent)
            job = self._copy_up_job(node, upper, mode="plain", plink=False, hit=None)
            with calls("au_cpup_dirs", "au_cpup_single"):
                await in_worker(job.run)
            node.layers = (0, *node.layers)
            if len(node.layers) == 2:
                self._inval_attrs(node)  # a merged directory reports st_nlink 1 from now on
            self.stats["copy_up"] += 1
            self._changed(node.parent)

    def _copy_up_job(self, node: Node, upper: Branch, **how: Any) -> cu.CopyUp:
        """The copy-up of ``node`` into ``upper``; by default in the mount's copy-up order,
        with pseudo-links and the ``copy_up`` injection point (``how`` overrides)."""
        assert node.parent is not None and self.work is not None
        how = {"mode": self.opts.copyup, "plink": True, "hit": self._hit_from_thread, **how}
        return cu.CopyUp(
            src=self.branches[node.top],
            src_path=node.path(node.top),
            upper=upper,
            dst_parent=node.parent.path(0),
            name=node.name,
            work=self.work,
            xino=self.xino,
            uino=node.uino,
            **how,
        )

    def _copied_up(self, node: Node, job: cu.CopyUp | None) -> None:
        if job is not None and job.plinked:
            self.plinks.add(node.uino)
        node.layers = (0,)
        node.plink = False
        self.stats["copy_up"] += 1
        assert node.parent is not None
        self._changed(node.parent)

    async def copy_up(self, node: Node) -> None:
        """Copy a non-directory up before it is modified (aufs ``au_sio_cpup_simple``)."""
        if node.is_dir:
            await self.copy_up_dir(node)
            return
        upper = self._need_upper()
        if node.top == 0:
            return
        parent = node.parent
        assert parent is not None and self.work is not None
        lock = self._cu_locks.get(node.uino)
        if (
            (lock is None or not lock.locked())
            and not node.unlinked
            and parent.resolved
            and parent.layers[0] == 0
            and node.uino not in self.plinks
        ):
            # the common case between plain directories: the whole copy-up runs here without
            # a checkpoint, so no other trio task can come between (no lock needed)
            job = self._copy_up_job(node, upper)
            if self._copy_up_inline(job):
                job.hit = self._hit_inline
                with calls("au_sio_cpup_simple", "au_cpup_single"):
                    job.run()
                self._copied_up(node, job)
                return
        async with self._cu_lock(node.uino):
            if node.top == 0:
                return
            if node.unlinked:
                await self._copy_up_orphan(node)
                return
            await self.copy_up_dir(parent)
            job = None
            if node.uino in self.plinks:
                # another name of this inode is up already: link its pseudo-link into place
                await in_worker(
                    functools.partial(
                        cu.link_up,
                        work=self.work,
                        upper=upper,
                        uino=node.uino,
                        dst_parent=parent.path(0),
                        name=node.name,
                        xino=self.xino,
                    )
                )
            else:
                job = self._copy_up_job(node, upper)
                with calls("au_sio_cpup_simple", "au_cpup_single"):
                    if self._copy_up_inline(job):
                        job.hit = self._hit_inline
                        job.run()
                    else:
                        await in_worker(job.run)
            self._copied_up(node, job)

    async def _copy_up_orphan(self, node: Node) -> None:
        """Copy up an object whose name is gone (unlinked while open, or the name the node
        remembered was removed while other hard links remain): the copy goes to the
        pseudo-link only (aufs keeps such copies in ``.wh..wh.plnk``/``.wh..wh.orph``)."""
        assert self.work is not None
        if node.uino in self.plinks:
            node.plink = True
            return
        job = cu.CopyUp(
            src=self.branches[node.top],
            src_path=node.path(node.top),
            upper=self.work,
            dst_parent=(cu.PLINK_DIR,),
            name=str(node.uino).encode(),
            work=self.work,
            xino=self.xino,
            uino=node.uino,
            mode=self.opts.copyup,
            hit=self._hit_from_thread,
            restore_parent_times=False,
        )
        job.orphan = True
        with calls("au_sio_cpup_simple", "au_cpup_single"):
            await in_worker(job.run)
        self.plinks.add(node.uino)
        node.plink = True
        self.stats["copy_up"] += 1

    # -- lookup and attributes -------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if name == b".":
            return await self._entry(Node(parent.uino, parent.parent, parent.name, parent.mode,
                                          parent.layers, parent.redirect, parent.plink,
                                          parent.resolved))
        if name == b"..":
            p = parent.parent or parent
            return await self._entry(Node(p.uino, p.parent, p.name, p.mode, p.layers,
                                          p.redirect, p.plink, p.resolved))
        whiteout.check_name(name)
        f = await self._lookup(parent, name)
        if f is None:
            return negative_entry(self.negative_timeout)
        node = self.nodes.add(self._node_from_found(parent, name, f))
        if node.plink:
            return await self._getattr_node(node)
        return self._attr(f.st, node.uino, len(f.layers))

    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.nodes.forget(ino, n)

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return await self._getattr_node(self._node(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        await self.copy_up(node)
        upper, path = self._data_loc(node)
        h = self.handles.get(fh) if fh is not None else None

        def apply() -> None:
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
            await self._sys(upper.blocking, apply)
        self._attrs_changed(node)
        return await self._getattr_node(node)

    @fuse_errors
    async def readlink(self, inode, ctx):
        node = self._node(inode)
        br, path = self._data_loc(node)
        return await self._sys(br.blocking, br.readlink, path)

    # -- creating names --------------------------------------------------------------------------

    def _owner(self, parent: Node, ctx) -> tuple[int, int]:
        gid = ctx.gid
        if parent.mode & stat_mod.S_ISGID:
            gid = -1  # the kernel gave it the directory's group (BSD group semantics)
        return ctx.uid, gid

    async def _create(
        self, parent: Node, name: bytes, ctx, make: Callable[[Branch, Path], Any], is_dir=False
    ) -> tuple[Node, os.stat_result, Any]:
        """Create ``name`` in the upper copy of ``parent`` with ``make(upper, path)``; remove a
        whiteout there (a directory made over one is opaque). Returns (node, stat, make's result).
        """
        whiteout.check_name(name)
        upper = self._need_upper()
        await self.copy_up_dir(parent)
        ppath = parent.path(0)
        check_wh = len(parent.layers) > 1 or parent.redirect is not None
        assert self.work is not None
        work = self.work

        def do() -> tuple[os.stat_result, Any]:
            had_wh = check_wh and whiteout.has_whiteout(upper, ppath, name)
            path = ppath + (name,)
            uid, gid = self._owner(parent, ctx)
            if is_dir and had_wh:
                pst = upper.stat(ppath)
                # build the opaque directory in the work dir, then move it over the whiteout
                tmp: Path = (cu.TMP_DIR, f"mk.{os.getpid()}.{id(path)}".encode())
                res = make(work, tmp)
                whiteout.make_opaque(work, tmp)
                work.chown(tmp, uid, gid if gid != -1 else pst.st_gid)
                if pst.st_mode & stat_mod.S_ISGID:
                    st0 = work.stat(tmp)
                    work.chmod(tmp, stat_mod.S_IMODE(st0.st_mode) | stat_mod.S_ISGID)
                if upper.exists(path):
                    _rmtree(work, tmp)
                    raise OSError(errno.EEXIST, "exists")
                work.rename(tmp, upper, path)
            else:
                res = make(upper, path)
                if uid != self._euid or gid not in (-1, self._egid):
                    upper.chown(path, uid, gid)
            if had_wh:
                whiteout.remove_whiteout(upper, ppath, name)
            st = upper.stat(path)
            self.xino.drop_override(st.st_ino)
            return st, res

        with calls("vfs_create", "aufs_create"):
            st, res = await self._sys(upper.blocking, do)
        node = Node(self.xino.natural(0, st.st_ino), parent, name, st.st_mode, (0,))
        self._changed(parent)
        return node, st, res

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._node(parent_inode)
        node, st, _ = await self._create(
            parent, name, ctx, lambda br, p: br.mknod(p, mode, rdev)
        )
        node = self.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._node(parent_inode)
        node, st, _ = await self._create(
            parent, name, ctx, lambda br, p: br.mkdir(p, mode), is_dir=True
        )
        node = self.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        parent = self._node(parent_inode)
        node, st, _ = await self._create(parent, name, ctx, lambda br, p: br.symlink(target, p))
        node = self.nodes.add(node)
        return self._attr(st, node.uino)

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._node(parent_inode)
        oflags = (flags & ~os.O_NOCTTY) | os.O_CREAT | os.O_EXCL

        def make(br: Branch, p: Path) -> int:
            return br.open(p, oflags, mode)

        node, st, fd = await self._create(parent, name, ctx, make)
        node = self.nodes.add(node)
        self._add_handle(fd, node, self._need_upper().blocking,
                         (flags & os.O_ACCMODE) != os.O_RDONLY)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._attr(st, node.uino)

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        whiteout.check_name(new_name)
        node = self._node(inode)
        parent = self._node(new_parent_inode)
        upper = self._need_upper()
        await self.copy_up(node)
        await self.copy_up_dir(parent)
        src = node.path(0)
        ppath = parent.path(0)
        check_wh = len(parent.layers) > 1 or parent.redirect is not None

        def do() -> os.stat_result:
            had_wh = check_wh and whiteout.has_whiteout(upper, ppath, new_name)
            upper.link(src, upper, ppath + (new_name,))
            if had_wh:
                whiteout.remove_whiteout(upper, ppath, new_name)
            return upper.stat(ppath + (new_name,))

        st = await self._sys(upper.blocking, do)
        self._changed(parent)
        self._attrs_changed(node)
        new = self.nodes.add(Node(node.uino, parent, new_name, st.st_mode, (0,)))
        return self._attr(st, new.uino)

    # -- removing names --------------------------------------------------------------------------

    def _is_empty(self, node: Node) -> bool:
        layers = [(b, node.path(b)) for b in node.layers]
        return not rd.merge(self.branches, layers)

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        upper = self._need_upper()
        f = await self._lookup(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such entry")
        if stat_mod.S_ISDIR(f.st.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        uino = self.xino.uino(f.layers[0], f.st.st_ino)
        await self.copy_up_dir(parent)
        ppath = parent.path(0)
        top = f.layers[0]

        def do() -> None:
            below = lookup_child(self.branches, parent, name, 1)
            if below is not None:
                whiteout.make_whiteout(upper, ppath, name)
            if top == 0:
                upper.unlink(ppath + (name,))
                if f.st.st_nlink <= 1 and uino not in self.plinks:
                    self.xino.drop_override(f.st.st_ino)
            elif uino in self.plinks:
                self.xino.set_lower_names(uino, self.xino.get_lower_names(uino) - 1)
            if uino in self.plinks:
                self._gc_plink(uino)

        with calls("vfs_unlink", "aufs_unlink"):
            await self._sys(self._blk_from(parent.top), do)
        node = self.nodes.get(uino)
        if node is not None and node.parent is parent and node.name == name:
            node.unlinked = True  # the name it remembers is gone (other links may remain)
        self._changed(parent)
        self._name_gone(parent, name)

    def _gc_plink(self, uino: int) -> None:
        """Drop the pseudo-link once no union name refers to the inode."""
        assert self.work is not None
        pl = (cu.PLINK_DIR, str(uino).encode())
        st = self.work.lstat(pl)
        if st is None:
            self.plinks.discard(uino)
            return
        if st.st_nlink <= 1 and self.xino.get_lower_names(uino) <= 0:
            self.work.unlink(pl)
            self.plinks.discard(uino)
            self.xino.drop_override(st.st_ino)
            self.xino.set_lower_names(uino, 0)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        upper = self._need_upper()
        f = await self._lookup(parent, name)
        if f is None:
            raise OSError(errno.ENOENT, "no such entry")
        if not stat_mod.S_ISDIR(f.st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        probe = self._node_from_found(parent, name, f)
        blk = self._blk_from(parent.top)
        if not await self._sys(blk, self._is_empty, probe):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        await self.copy_up_dir(parent)
        ppath = parent.path(0)

        def do() -> None:
            below = lookup_child(self.branches, parent, name, 1)
            if below is not None:
                whiteout.make_whiteout(upper, ppath, name)
            if f.layers[0] == 0:
                whiteout.clear_dir(upper, ppath + (name,))
                upper.rmdir(ppath + (name,))

        with calls("vfs_rmdir", "aufs_rmdir"):
            await self._sys(blk, do)
        node = self.nodes.get(probe.uino)
        if node is not None:
            node.unlinked = True
        self._changed(parent)
        self._name_gone(parent, name)

    # -- rename ----------------------------------------------------------------------------------

    async def _prepare_move(self, node: Node) -> None:
        """Make ``node`` movable within the upper branch: copy a file up; give a directory an
        upper directory and, if lower branches hold parts of it, a redirect to where they see
        it, so the upper directory can move anywhere and take its lower parts along."""
        upper = self._need_upper()
        if not node.is_dir:
            await self.copy_up(node)
            return
        await self._resolve(node)
        lower = [b for b in node.layers if b != 0]
        await self.copy_up_dir(node)
        if lower and (node.redirect is None or node.redirect[0] != 0):
            target = node.path(lower[0])
            path = node.path(0)
            await self._sys(upper.blocking, whiteout.write_redirect, upper, path, target)
            node.redirect = (0, target)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        whiteout.check_name(name_new)
        upper = self._need_upper()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise OSError(errno.EINVAL, "bad rename flags")
        old_p = self._node(parent_inode_old)
        new_p = self._node(parent_inode_new)
        fs = await self._lookup(old_p, name_old)
        if fs is None:
            raise OSError(errno.ENOENT, "no such entry")
        fd_ = await self._lookup(new_p, name_new)
        src = self.nodes.add(self._node_from_found(old_p, name_old, fs))
        try:
            await self._rename(src, fs, old_p, name_old, new_p, name_new, fd_, flags, upper)
        finally:
            self.nodes.forget(src.uino, 1)
            self._changed(old_p, new_p)

    async def _rename(self, src, fs, old_p, name_old, new_p, name_new, fd_, flags, upper):
        exchange = bool(flags & RENAME_EXCHANGE)
        src_dir = stat_mod.S_ISDIR(fs.st.st_mode)
        dst: Node | None = None
        if fd_ is not None:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "target exists")
            dst = self.nodes.add(self._node_from_found(new_p, name_new, fd_))
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
                    await self._resolve(dst)
                    if not await self._sys(self._blk_from(dst.top), self._is_empty, dst):
                        raise OSError(errno.ENOTEMPTY, "target directory not empty")
            await self.copy_up_dir(old_p)
            await self.copy_up_dir(new_p)
            await self._prepare_move(src)
            if exchange:
                assert dst is not None
                await self._prepare_move(dst)
            old_pp, new_pp = old_p.path(0), new_p.path(0)
            src_redirected = src.redirect is not None and src.redirect[0] == 0
            dst_lower = fd_ is not None and any(b != 0 for b in fd_.layers)

            def do() -> None:
                had_wh = whiteout.has_whiteout(upper, new_pp, name_new)
                if dst is not None and not exchange and dst_dir and 0 in dst.layers:
                    whiteout.clear_dir(upper, dst.path(0))
                if exchange:
                    upper.rename(old_pp + (name_old,), upper, new_pp + (name_new,),
                                 RENAME_EXCHANGE)
                    return
                if src_dir and not src_redirected and (had_wh or dst_lower):
                    whiteout.make_opaque(upper, old_pp + (name_old,))
                upper.rename(old_pp + (name_old,), upper, new_pp + (name_new,),
                             flags & RENAME_NOREPLACE)
                if had_wh:
                    whiteout.remove_whiteout(upper, new_pp, name_new)
                if lookup_child(self.branches, old_p, name_old, 1) is not None:
                    whiteout.make_whiteout(upper, old_pp, name_old)

            with calls("vfs_rename", "aufs_rename"):
                await self._sys(self._blk_from(min(old_p.top, new_p.top)), do)
            if not exchange:
                self._name_gone(old_p, name_old)
            # the moved nodes now live at their new names: look them up again
            moved = [(src, new_p, name_new)]
            if exchange:
                assert dst is not None
                moved.append((dst, old_p, name_old))
            elif dst is not None:
                dst.unlinked = True
                if dst.uino in self.plinks and fd_ is not None and fd_.layers[0] != 0:
                    self.xino.set_lower_names(dst.uino, self.xino.get_lower_names(dst.uino) - 1)
            for n, p, name in moved:
                n.parent, n.name = p, name
                f = await self._lookup(p, name)
                if f is not None:
                    n.layers, n.redirect, n.mode, n.resolved = f.layers, f.redirect, \
                        f.st.st_mode, True
                    n.plink = False
        finally:
            if dst is not None:
                self.nodes.forget(dst.uino, 1)

    # -- files -----------------------------------------------------------------------------------

    def _add_handle(self, fd: int, node: Node, blocking: bool, writable: bool = False) -> None:
        self.handles[fd] = Handle(fd, node, blocking, writable)
        node.opened += 1
        node.fds.add(fd)

    @fuse_errors
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            await self.copy_up(node)
        br, path = self._data_loc(node)
        oflags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        with calls("do_dentry_open", "aufs_open_nondir"):
            fd = await self._sys(br.blocking, br.open, path, oflags | os.O_NOFOLLOW)
        self._add_handle(fd, node, br.blocking, bool(writing))
        if writing:
            self._attrs_changed(node)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @fuse_errors
    async def read(self, fh, off, size):
        h = self.handles[fh]
        if h.blocking:
            return await in_worker(os.pread, fh, size, off)
        return os.pread(fh, size, off)

    @fuse_errors
    async def write(self, fh, off, buf):
        h = self.handles[fh]
        if h.blocking:
            return await in_worker(os.pwrite, fh, buf, off)
        return os.pwrite(fh, buf, off)

    # no flush(): the base class answers ENOSYS once and the kernel stops sending FLUSH at
    # every close(2) (fc->no_flush); release closes the branch fd.

    @fuse_errors
    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if h is None:
            return
        h.node.opened -= 1
        h.node.fds.discard(fh)
        if h.writable:
            self._attrs_changed(h.node)
        self.nodes.closed(h.node)
        if h.blocking:
            await in_worker(os.close, fh)
        else:
            os.close(fh)

    @fuse_errors
    async def fsync(self, fh, datasync):
        h = self.handles[fh]
        await self._sys(h.blocking, os.fdatasync if datasync else os.fsync, fh)

    # -- directories -----------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        await self._resolve(node)
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = DirHandle(node)
        node.opened += 1
        return dh

    def _listing(self, node: Node) -> rd.Listing:
        layers = [(b, node.path(b)) for b in node.layers]
        made = time.time_ns()
        stamp = rd.layer_stamp(self.branches, layers)
        listing = self.listings.get(node.uino, stamp)
        if listing is None:
            listing = self.listings.put(node.uino, stamp, rd.merge(self.branches, layers), made)
        return listing

    def _entry_replies(self, node: Node, entries: list[rd.Entry]) -> list[tuple | None]:
        """stat ``entries`` (relative to one directory fd per layer) and build their
        readdirplus replies: ``(name, attrs, uino, mode, branch, plink)``, None if gone."""
        out: list[tuple | None] = []
        work = self.work
        plinks = self.plinks
        xino_uino = self.xino.uino
        attr = self._attr
        last = len(self.branches) - 1
        dfds: dict[int, int] = {}
        try:
            for e in entries:
                b = e.branch
                dfd = dfds.get(b)
                if dfd is None:
                    try:
                        dfd = dfds[b] = self.branches[b].open(
                            node.path(b), os.O_PATH | os.O_DIRECTORY
                        )
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
                uino = xino_uino(b, st.st_ino)
                plink = b != 0 and uino in plinks
                if plink and work is not None:
                    st = work.lstat((cu.PLINK_DIR, str(uino).encode())) or st
                mode = st.st_mode
                if stat_mod.S_ISDIR(mode):
                    a = attr(st, uino, 2)
                    a.st_nlink = st.st_nlink if b == last else 1
                else:
                    a = attr(st, uino, 1)
                out.append((e.name, a, uino, mode, b, plink, st.st_nlink))
        finally:
            for fd in dfds.values():
                if fd >= 0:
                    os.close(fd)
        return out

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        dh = self.dirs[fh]
        node = dh.node
        blk = self._blk_from(node.top)
        if dh.listing is None or start_id == 0:
            dh.made = time.monotonic_ns()
            with calls("iterate_dir", "aufs_iterate_shared"):
                dh.listing = await self._sys(blk, self._listing, node)
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
            replies = listing.replies = [_UNSET] * len(entries)
            listing.replies_ns = now
        left = (ttl - (now - listing.replies_ns)) / 1e9 if ttl > 0 else 0.0
        nodes = self.nodes.nodes
        batch = 32
        n = len(entries)
        while idx - 2 < n:
            lo = idx - 2
            hi = min(lo + batch, n)
            batch = 256
            fresh: set[int] | None = None
            if replies is None:
                chunk = await self._sys(blk, self._entry_replies, node, entries[lo:hi])
            else:
                # make the replies not made yet, and those of files open or hard-linked (their
                # attributes may have moved without their directory changing)
                need = [
                    k for k in range(lo, hi)
                    if (r := replies[k]) is _UNSET or r is not None and not S_ISDIR(r[3]) and (
                        r[6] > 1 or (o := nodes.get(r[2])) is not None and o.opened > 0
                    )
                ]
                if need:
                    made = await self._sys(
                        blk, self._entry_replies, node, [entries[k] for k in need]
                    )
                    for k, r in zip(need, made, strict=True):
                        replies[k] = r
                    fresh = set(need)
                self.stats["readdir_kept"] += hi - lo - len(need)
                chunk = replies[lo:hi]
            for k, r in enumerate(chunk, lo):
                idx += 1
                if r is None:
                    continue  # removed since the listing was made
                name, a, uino, mode, b, plink, _nl = r
                if gone and gone.get(name, 0) >= dh.made:
                    continue
                if replies is not None and (fresh is None or k not in fresh):
                    a.attr_timeout = left  # a kept reply: valid no longer than its stat
                if not reply(token, name, a, idx):
                    return
                old = nodes.get(uino)
                if old is None:
                    child = Node(uino, node, name, mode, (b,), None, plink,
                                 resolved=not stat_mod.S_ISDIR(mode))
                    child.nlookup = 1
                    nodes[uino] = child
                else:
                    old.nlookup += 1
                    old.parent, old.name, old.mode = node, name, mode
                    isdir = stat_mod.S_ISDIR(mode)
                    if not isdir or old.layers[0] != b:
                        old.layers, old.redirect, old.resolved = (b,), None, not isdir
                    old.plink = plink
                    old.unlinked = False

    @fuse_errors
    async def releasedir(self, fh):
        dh = self.dirs.pop(fh, None)
        if dh is not None:
            dh.node.opened -= 1
            if dh.node.opened <= 0:
                self._gone.pop(dh.node.uino, None)
            self.nodes.closed(dh.node)

    async def fsyncdir(self, fh, datasync):
        return None

    @fuse_errors
    async def statfs(self, ctx):
        br = self.upper or self.branches[0]
        sv = await self._sys(br.blocking, br.statvfs)
        return statvfs_data(sv, namemax=max(sv.f_namemax - len(whiteout.WH_PREFIX), 1))

    # -- xattrs ----------------------------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        if crosslock.reserved(name):
            return await crosslock.serve_getxattr(lambda: self._i_rwsem(node), name, ctx.pid)
        br, path = self._data_loc(node)
        try:
            return await self._sys(br.blocking, br.getxattr, path, name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        br, path = self._data_loc(node)
        names = await self._sys(br.blocking, br.listxattr, path)
        return [os.fsencode(n) for n in names if not n.startswith("trusted.stackfs.")]

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        node = self._node(inode)
        if crosslock.reserved(name):
            await crosslock.serve_setxattr(lambda: self._i_rwsem(node), name, value, ctx.pid)
            return
        await self.copy_up(node)
        br, path = self._data_loc(node)
        await self._sys(br.blocking, br.setxattr, path, name, value)
        self._attrs_changed(node)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        node = self._node(inode)
        if crosslock.reserved(name):
            crosslock.serve_removexattr(lambda: self._i_rwsem(node), name, ctx.pid)
            return
        await self.copy_up(node)
        br, path = self._data_loc(node)
        self._attrs_changed(node)
        try:
            await self._sys(br.blocking, br.removexattr, path, name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    # cross-layer lock: a union stacked on this one takes our inode's i_rwsem through an xattr
    def _i_rwsem(self, node: Node) -> RWSem:
        sem = self.kernel.locks.i_rwsem(node.uino, desc=f"{node.describe()} (ino {node.uino})")
        crosslock.release_exited_holders(sem)
        return sem


def _rmtree(br: Branch, path: Path) -> None:
    st = br.lstat(path)
    if st is None:
        return
    if not stat_mod.S_ISDIR(st.st_mode):
        br.unlink(path)
        return
    for n in br.listdir(path):
        _rmtree(br, path + (n,))
    br.rmdir(path)
