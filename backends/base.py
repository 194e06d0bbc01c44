"""``StoreFS``: a complete passthrough filesystem over a store directory, the one base every
backend personality (passthrough, AFS, NFS) extends.

The store plays the server. Every object the kernel knows is an :class:`Inode`: our FUSE node id,
an ``O_PATH|O_NOFOLLOW`` descriptor on the store object (as libfuse's passthrough_ll keeps), the
object's identity ``(st_dev, st_ino)``, the kernel's lookup count, and the best-known name
``(parent, name)``, kept right across renames (ours and the server's). Name operations use the
parent's descriptor and the ``*at()`` calls, so an inode stays the same object whatever happens to
names; node ids are the store's inode numbers where they can be (stable across remounts).

Shared behaviour lives here, personalities only add to it through hooks:

``timeouts(inode)``
    entry/attribute timeouts of an answer (``-o entry_timeout=S,attr_timeout=S``).
``lookup_entry(parent, name, ctx)``
    a LOOKUP (NFS runs its nfs_atomic_open model here).
``check_inode(inode, op)``
    before an operation on an inode (NFS: ESTALE for a stale file handle).
``open_hook(handle, ctx)`` / ``flush_hook`` / ``fsync_hook`` / ``release_hook`` / ``setattr_hook``
    around open files (AFS: data versions, page-cache flush, store-back on close).
``stat_inode(inode)``
    the attributes the client reports (AFS: overlay its dirty cache).
``on_server_change(change)``
    after another client changed the server through the ``server`` control op (here: tell the
    kernel, as a coherent server would; AFS breaks callbacks; NFS notices nothing).

Cross-layer locking (``trusted.stackfs.i_rwsem``) is :mod:`backends.xattrlock`; another client
changing the server is :mod:`backends.server`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, RequestContext

from backends.options import BASE_OPTIONS, Option, split_options
from backends.server import ServerSide
from backends.tables import DirHandle, Handle, Inode, ServerChange
from backends.xattrlock import InodeLocks
from stackfs.kernel.events import Oops
from stackfs.kernel.state import KernelState
from stackfs.linux import libc
from stackfs.runtime import control, crosslock, fuseattr
from stackfs.runtime.daemon import TestbedOperations
from stackfs.runtime.fuseerr import fuse_error

log = logging.getLogger(__name__)

__all__ = [
    "BASE_OPTIONS",
    "DirHandle",
    "Handle",
    "Inode",
    "Option",
    "ServerChange",
    "StoreFS",
    "fuse_op",
    "split_options",
]

ROOT = pyfuse3.ROOT_INODE
#: Node ids we allocate ourselves (objects on another device, collisions) start here.
_ALLOC_BASE = 1 << 56

_O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags the kernel handled already, or that we handle differently (O_APPEND: the kernel
#: computes the offset; O_DIRECT: reported as FOPEN_DIRECT_IO).
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_APPEND | os.O_DIRECT

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _proc_fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


# -- errors ----------------------------------------------------------------------------------------


def fuse_op(fn: F) -> F:
    """Turn OSError into FUSEError (errno kept: :func:`stackfs.runtime.fuseerr.fuse_error`), and a
    model
    Oops into EIO.

    After an oops with ``panic_on_oops`` the daemon stops answering FUSE requests (the control
    socket goes on answering), as a panicked kernel would.
    """

    @functools.wraps(fn)
    async def wrapper(self: StoreFS, *args: Any) -> Any:
        if self.panicked:
            await trio.sleep_forever()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise fuse_error(exc) from None
        except Oops:
            if self.kernel.panic_on_oops:
                self.panicked = True
                await trio.sleep_forever()
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


# -- the filesystem --------------------------------------------------------------------------------


class StoreFS(ServerSide, InodeLocks, TestbedOperations):
    """The passthrough filesystem over ``store``; see the module docstring."""

    kind = "store"
    #: variant name -> one-line description (the first is the default)
    variants: dict[str, str] = {"default": "plain passthrough"}
    #: other names of a variant (alias -> variant): one vocabulary with the scenarios' variant
    #: names (``stackfs repro list``), old names kept working
    variant_aliases: dict[str, str] = {}
    #: variant name -> the Linux release its kernel model stands for (e.g. ``"4.7-rc1"``):
    #: stamped on the model's events, so a report names it and prints its frames under it
    releases: dict[str, str] = {}
    #: injection point name -> description (declared on the kernel state at start)
    injection_points: dict[str, str] = {}
    #: options of this personality (besides BASE_OPTIONS)
    extra_options: tuple[Option, ...] = ()
    #: personality defaults for BASE_OPTIONS (e.g. NFS: entry_timeout 0)
    option_defaults: dict[str, Any] = {}

    supports_dot_lookup = True
    enable_writeback_cache = False

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        base = tuple(
            Option(o.name, o.kind, cls.option_defaults[o.name], o.help)
            if o.name in cls.option_defaults
            else o
            for o in BASE_OPTIONS
        )
        return base + cls.extra_options

    @classmethod
    def default_variant(cls) -> str:
        return next(iter(cls.variants))

    @classmethod
    def resolve_variant(cls, variant: str | None) -> str:
        """The variant ``variant`` names (itself, or through an alias); the default for None.
        Raises ValueError, one line, for a name this personality does not know."""
        if variant is None:
            return cls.default_variant()
        name = cls.variant_aliases.get(variant, variant)
        if name not in cls.variants:
            known = [*cls.variants, *(f"{a} (= {v})" for a, v in cls.variant_aliases.items())]
            raise ValueError(
                f"unknown variant {variant!r} of {cls.kind} (known: {', '.join(known)})"
            )
        return name

    def __init__(
        self,
        store: str | os.PathLike[str],
        variant: str | None = None,
        options: dict[str, Any] | None = None,
        kernel: KernelState | None = None,
    ) -> None:
        super().__init__(kernel)
        self.variant = self.resolve_variant(variant)
        opts = {o.name: o.default for o in self.options()}
        opts.update(options or {})
        self.opts = opts
        self.entry_timeout = float(opts["entry_timeout"])
        self.attr_timeout = float(opts["attr_timeout"])
        self.kernel.panic_on_oops = bool(opts["panic_on_oops"])
        self.kernel.events.release = self.releases.get(self.variant)
        self.panicked = False
        for name, description in self.injection_points.items():
            self.kernel.inject.declare(name, description)

        self.store = Path(store).resolve()
        root_fd = os.open(self.store, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(root_fd)
        self.root_dev = st.st_dev
        root = Inode(ROOT, root_fd, (st.st_dev, st.st_ino), stat.S_IFDIR, None, b"")
        root.nlookup = 1 << 62  # never forgotten
        self.inodes: dict[int, Inode] = {ROOT: root}
        self.by_key: dict[tuple[int, int], int] = {root.key: ROOT}
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = itertools.count(1).__next__
        self._next_ino = itertools.count(_ALLOC_BASE).__next__
        self.stats: dict[str, int] = {}

    # -- bookkeeping -----------------------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def inode(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise _err(errno.ESTALE) from None

    def handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise _err(errno.EBADF) from None

    def path_of(self, inode: Inode) -> str:
        """The best-known store path of ``inode`` (``/a/b``), for descriptions."""
        parts: list[bytes] = []
        cur: Inode | None = inode
        seen = 0
        while cur is not None and cur.ino != ROOT and seen < 256:
            if cur.parent is None:
                return "(unlinked)/" + os.fsdecode(b"/".join(reversed([cur.name, *parts])))
            parts.append(cur.name)
            cur = self.inodes.get(cur.parent)
            seen += 1
        if cur is None:
            return "?/" + os.fsdecode(b"/".join(reversed(parts)))
        return "/" + os.fsdecode(b"/".join(reversed(parts)))

    def _alloc_ino(self, st: os.stat_result) -> int:
        if st.st_dev == self.root_dev and st.st_ino != ROOT and st.st_ino < _ALLOC_BASE:
            if st.st_ino not in self.inodes:
                return st.st_ino
        return self._next_ino()

    def _set_link(self, inode: Inode, parent: int | None, name: bytes) -> None:
        inode.parent = parent
        inode.name = name

    def remember(self, fd: int, st: os.stat_result, parent: Inode | None, name: bytes) -> Inode:
        """The inode of the object behind the O_PATH ``fd`` (takes ownership of ``fd``)."""
        key = (st.st_dev, st.st_ino)
        ino = self.by_key.get(key)
        if ino is not None:
            os.close(fd)
            inode = self.inodes[ino]
            if parent is not None:
                self._set_link(inode, parent.ino, name)
            return inode
        ino = self._alloc_ino(st)
        inode = Inode(ino, fd, key, stat.S_IFMT(st.st_mode), parent.ino if parent else None, name)
        self.inodes[ino] = inode
        self.by_key[key] = ino
        self.new_inode(inode, st)
        return inode

    def new_inode(self, inode: Inode, st: os.stat_result) -> None:
        """Hook: a new inode entered the table."""

    def maybe_free(self, inode: Inode) -> None:
        """Drop ``inode`` from the tables once the kernel forgot it and nothing has it open."""
        if inode.ino == ROOT or inode.nlookup > 0 or inode.opens > 0:
            return
        self.inodes.pop(inode.ino, None)
        if self.by_key.get(inode.key) == inode.ino:
            del self.by_key[inode.key]
        self.free_inode(inode)
        with contextlib.suppress(OSError):
            os.close(inode.fd)

    def free_inode(self, inode: Inode) -> None:
        """Hook: ``inode`` leaves the table."""

    def lookup_store(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Find ``name`` in ``parent`` on the store (no lookup count taken)."""
        if name == b".":
            return parent, self.stat_inode(parent)
        if name == b"..":
            if parent.ino == ROOT:
                return parent, self.stat_inode(parent)
            fd = os.open(b"..", _O_PATH_FLAGS, dir_fd=parent.fd)
        else:
            fd = os.open(name, _O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if name == b"..":
            inode = self.remember(fd, st, None, b"")
        else:
            inode = self.remember(fd, st, parent, name)
        return inode, self.overlay_stat(inode, st)

    # -- attributes ------------------------------------------------------------------------------

    def timeouts(self, inode: Inode | None) -> tuple[float, float]:
        """Hook: (entry_timeout, attr_timeout) for answers about ``inode``."""
        return self.entry_timeout, self.attr_timeout

    def stat_inode(self, inode: Inode) -> os.stat_result:
        """Hook: the attributes of ``inode`` as this client reports them."""
        return self.overlay_stat(inode, os.fstat(inode.fd))

    def overlay_stat(self, inode: Inode, st: os.stat_result) -> os.stat_result:
        """Hook: adjust store attributes (AFS: a dirty cache's size and mtime)."""
        return st

    def entry(self, inode: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        return fuseattr.entry_attributes(st, inode.ino, *self.timeouts(inode))

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """A cacheable negative answer (st_ino 0), for the entry timeout."""
        return fuseattr.negative_entry(self.timeouts(None)[0])

    def check_inode(self, inode: Inode, op: str) -> None:
        """Hook: raise (e.g. ESTALE) if ``op`` may not go on with ``inode``."""

    def object_gone(self, inode: Inode) -> bool:
        """The server no longer has ``inode``'s object: another client (or this one) renamed
        over it or removed it, and its last link is gone. A stale NFS file handle and a Lustre
        FID the MDT answers ENOENT for both mean this."""
        if inode.ino == ROOT:
            return False
        try:
            return os.fstat(inode.fd).st_nlink == 0
        except OSError:
            return True

    def changed(self, *inodes: Inode | None) -> None:
        """Hook: this client changed these inodes' attributes (NFS: drop cached attributes)."""

    def _chown_new(self, parent: Inode, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """New objects belong to the caller (the daemon runs as root); BSD group semantics
        in a set-group-ID directory."""
        pst = os.fstat(parent.fd)
        gid = pst.st_gid if pst.st_mode & stat.S_ISGID else ctx.gid
        if ctx.uid == 0 and gid == 0:
            return
        libc.fchownat(parent.fd, name, ctx.uid, gid)

    def _created(self, parent: Inode, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        self.changed(parent)
        self._chown_new(parent, name, ctx)
        inode, st = self.lookup_store(parent, name)
        inode.nlookup += 1
        self.name_created(parent, name, inode)
        return self.entry(inode, st)

    def name_created(self, parent: Inode, name: bytes, inode: Inode) -> None:
        """Hook: this client created ``name`` in ``parent`` (NFS: instantiate its dentry)."""

    # -- LOOKUP, FORGET, GETATTR, SETATTR ----------------------------------------------------------

    async def lookup_entry(
        self, parent: Inode, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Hook: answer a LOOKUP (takes the lookup count on success)."""
        inode, st = self.lookup_store(parent, name)
        self.check_inode(inode, "lookup")
        inode.nlookup += 1
        return self.entry(inode, st)

    @fuse_op
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "lookup")
        return await self.lookup_entry(parent, name, ctx)

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        for ino, n in inode_list:
            inode = self.inodes.get(ino)
            if inode is None or ino == ROOT:
                continue
            inode.nlookup = max(0, inode.nlookup - n)
            self.maybe_free(inode)

    def getattr_inode(self, inode: Inode) -> os.stat_result:
        """Hook: the attributes a GETATTR answers (NFS: from its attribute cache)."""
        return self.stat_inode(inode)

    @fuse_op
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inode(inode)
        self.check_inode(node, "getattr")
        return self.entry(node, self.getattr_inode(node))

    async def setattr_hook(
        self,
        inode: Inode,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        handle: Handle | None,
    ) -> bool:
        """Hook: apply a size change; return True if done (default: not handled here)."""
        return False

    @fuse_op
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inode(inode)
        self.check_inode(node, "setattr")
        handle = self.handles.get(fh) if fh is not None else None
        if fields.update_size and not await self.setattr_hook(node, attr, fields, handle):
            if handle is not None:
                os.ftruncate(handle.fd, attr.st_size)
            else:
                os.truncate(_proc_fd(node.fd), attr.st_size)
        if fields.update_mode and node.kind != stat.S_IFLNK:
            os.chmod(_proc_fd(node.fd), stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            libc.fchown_empty(
                node.fd,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1,
            )
        if fields.update_atime or fields.update_mtime:
            libc.utimens_empty(
                node.fd,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
            self.times_set(node, attr, fields)
        self.changed(node)
        return self.entry(node, self.stat_inode(node))

    def times_set(
        self, inode: Inode, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
    ) -> None:
        """Hook: utimensat(2) set the times of ``inode`` (AFS: StoreData carries the mtime)."""

    @fuse_op
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        node = self.inode(inode)
        self.check_inode(node, "readlink")
        return os.readlink(b"", dir_fd=node.fd)

    # -- namespace -------------------------------------------------------------------------------

    @fuse_op
    async def mknod(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "mknod")
        os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @fuse_op
    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "mkdir")
        os.mkdir(name, mode, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @fuse_op
    async def symlink(
        self, parent_inode: InodeT, name: FileNameT, target: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "symlink")
        os.symlink(target, name, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @fuse_op
    async def link(
        self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.inode(inode)
        parent = self.inode(new_parent_inode)
        self.check_inode(node, "link")
        self.check_inode(parent, "link")
        libc.link_empty(node.fd, parent.fd, new_name)
        self.changed(node, parent)
        node.nlookup += 1
        if node.parent is None:
            self._set_link(node, parent.ino, new_name)
        self.name_created(parent, new_name, node)
        return self.entry(node, self.stat_inode(node))

    def _known_child(self, parent: Inode, name: bytes) -> Inode | None:
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return None
        ino = self.by_key.get((st.st_dev, st.st_ino))
        return self.inodes.get(ino) if ino is not None else None

    def _unlinked(
        self, inode: Inode | None, parent: Inode, name: bytes, by_server: bool = False
    ) -> None:
        if inode is not None and inode.parent == parent.ino and inode.name == name:
            self._set_link(inode, None, name)
        self.name_changed(parent, name, inode, by_server)

    def name_changed(
        self, parent: Inode, name: bytes, inode: Inode | None, by_server: bool
    ) -> None:
        """Hook: ``name`` in ``parent`` was removed or replaced (``inode``: what it named, if
        known). NFS drops its modelled dentry; a server-side removal makes handles stale."""

    @fuse_op
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "unlink")
        victim = self._known_child(parent, name)
        os.unlink(name, dir_fd=parent.fd)
        self.changed(parent, victim)
        self._unlinked(victim, parent, name)

    @fuse_op
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "rmdir")
        victim = self._known_child(parent, name)
        os.rmdir(name, dir_fd=parent.fd)
        self.changed(parent, victim)
        self._unlinked(victim, parent, name)

    @fuse_op
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: RequestContext,
    ) -> None:
        old_parent = self.inode(parent_inode_old)
        new_parent = self.inode(parent_inode_new)
        self.check_inode(old_parent, "rename")
        self.check_inode(new_parent, "rename")
        moved = self._known_child(old_parent, name_old)
        target = self._known_child(new_parent, name_new)
        libc.renameat2(old_parent.fd, name_old, new_parent.fd, name_new, flags)
        self.changed(old_parent, new_parent, moved, target)
        self.renamed(moved, target, old_parent, name_old, new_parent, name_new, flags)

    def renamed(
        self,
        moved: Inode | None,
        target: Inode | None,
        old_parent: Inode,
        name_old: bytes,
        new_parent: Inode,
        name_new: bytes,
        flags: int,
        by_server: bool = False,
    ) -> None:
        """Keep the names of the table right after a rename (ours or the server's)."""
        if flags & libc.RENAME_EXCHANGE:
            if moved is not None:
                self._set_link(moved, new_parent.ino, name_new)
            if target is not None:
                self._set_link(target, old_parent.ino, name_old)
            self.name_changed(old_parent, name_old, moved, by_server)
            self.name_changed(new_parent, name_new, target, by_server)
            return
        if target is not None and target is not moved:
            self._unlinked(target, new_parent, name_new, by_server)
        else:
            self.name_changed(new_parent, name_new, None, by_server)
        self.name_changed(old_parent, name_old, moved, by_server)
        if moved is not None:
            self._set_link(moved, new_parent.ino, name_new)

    # -- files -----------------------------------------------------------------------------------

    def _new_handle(self, inode: Inode, fd: int, flags: int) -> Handle:
        handle = Handle(self._next_fh(), inode, fd, flags)
        if flags & os.O_DIRECT:
            handle.direct_io = True
        self.handles[handle.fh] = handle
        inode.opens += 1
        return handle

    def _keep_cache_default(self, inode: Inode, fd: int) -> bool:
        """Passthrough's rule: keep the kernel's pages if the file did not change since."""
        st = os.fstat(fd)
        sig = (st.st_mtime_ns, st.st_size)
        keep = inode.cache_sig == sig
        inode.cache_sig = sig
        return keep

    async def open_hook(self, handle: Handle, ctx: pyfuse3.RequestContext) -> None:
        """Hook: the store file is open (``handle.fd``); decide caching, flush, swap fd."""
        handle.keep_cache = self._keep_cache_default(handle.inode, handle.fd)

    def _file_info(self, handle: Handle) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(
            fh=handle.fh, keep_cache=handle.keep_cache, direct_io=handle.direct_io
        )

    async def _opened(self, handle: Handle, ctx) -> pyfuse3.FileInfo:
        try:
            await self.open_hook(handle, ctx)
        except BaseException:
            self._drop_handle(handle)
            raise
        return self._file_info(handle)

    async def open_inode(self, inode: Inode, flags: int, ctx) -> int:
        """Hook: open the store object of ``inode`` (by identity, as the kernel opened it)."""
        return os.open(_proc_fd(inode.fd), (flags & ~_STRIP_OPEN) | os.O_CLOEXEC)

    @fuse_op
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> pyfuse3.FileInfo:
        node = self.inode(inode)
        self.check_inode(node, "open")
        fd = await self.open_inode(node, flags, ctx)
        return await self._opened(self._new_handle(node, fd, flags), ctx)

    @fuse_op
    async def create(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT, ctx: RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.inode(parent_inode)
        self.check_inode(parent, "create")
        oflags = (flags | os.O_CREAT) & ~(_STRIP_OPEN & ~(os.O_CREAT | os.O_EXCL))
        fd = os.open(name, oflags | os.O_CLOEXEC, mode, dir_fd=parent.fd)
        try:
            attr = self._created(parent, name, ctx)
        except BaseException:
            os.close(fd)
            raise
        node = self.inodes[attr.st_ino]
        fd = await self.created_fd(node, fd, flags, ctx)
        fi = await self._opened(self._new_handle(node, fd, flags), ctx)
        return fi, attr

    async def created_fd(self, inode: Inode, fd: int, flags: int, ctx) -> int:
        """Hook: the descriptor a CREATE serves its file through (AFS: its cache file)."""
        return fd

    def check_handle(self, handle: Handle, op: str) -> None:
        """Hook: raise (e.g. ESTALE) if ``op`` may not go on with the open file ``handle``."""

    def wrote(self, handle: Handle, off: int, size: int) -> None:
        """Hook: ``size`` bytes were written at ``off`` (AFS: the cache is dirty)."""
        handle.dirty = True

    async def read_hook(self, handle: Handle) -> None:
        """Hook: a READ is about to be served from ``handle.fd`` (AFS: revalidate the cache
        against the status, as ``afs_linux_read_iter -> afs_GenericRead`` does)."""

    @fuse_op
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        handle = self.handle(fh)
        self.check_handle(handle, "read")
        await self.read_hook(handle)
        return os.pread(handle.fd, size, off)

    @fuse_op
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        handle = self.handle(fh)
        self.check_handle(handle, "write")
        view = memoryview(buf)
        done = 0
        while done < len(view):
            done += os.pwrite(handle.fd, view[done:], off + done)
        self.wrote(handle, off, done)
        return done

    async def flush_hook(self, handle: Handle) -> None:
        """Hook: close(2) of a descriptor of ``handle`` (AFS, NFS: write back to the server)."""

    async def fsync_hook(self, handle: Handle, datasync: bool) -> None:
        """Hook: fsync(2) (AFS: store back)."""
        if datasync:
            os.fdatasync(handle.fd)
        else:
            os.fsync(handle.fd)

    async def release_hook(self, handle: Handle) -> None:
        """Hook: the last descriptor of ``handle`` is closed."""

    @fuse_op
    async def flush(self, fh: FileHandleT) -> None:
        await self.flush_hook(self.handle(fh))

    @fuse_op
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        await self.fsync_hook(self.handle(fh), datasync)

    def _drop_handle(self, handle: Handle) -> None:
        self.handles.pop(handle.fh, None)
        if handle.owns_fd:
            with contextlib.suppress(OSError):
                os.close(handle.fd)
        handle.inode.opens -= 1
        self.maybe_free(handle.inode)

    @fuse_op
    async def release(self, fh: FileHandleT) -> None:
        handle = self.handles.get(fh)
        if handle is None:
            return
        try:
            await self.release_hook(handle)
            if handle.owns_fd and handle.inode.cache_sig is not None:
                with contextlib.suppress(OSError):
                    st = os.fstat(handle.fd)
                    handle.inode.cache_sig = (st.st_mtime_ns, st.st_size)
        finally:
            self._drop_handle(handle)

    # -- directories -----------------------------------------------------------------------------

    @fuse_op
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        node = self.inode(inode)
        self.check_inode(node, "opendir")
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
        dh = DirHandle(self._next_fh(), node, fd)
        self.dirs[dh.fh] = dh
        node.opens += 1
        return dh.fh

    def list_dir(self, dh: DirHandle) -> list[bytes]:
        """Hook: the names of an open directory (without . and ..)."""
        return [os.fsencode(n) for n in os.listdir(dh.fd)]

    @fuse_op
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        dh = self.dirs.get(fh)
        if dh is None:
            raise _err(errno.EBADF)
        if start_id == 0 or dh.entries is None:
            dh.entries = [b".", b"..", *self.list_dir(dh)]
        entries = dh.entries
        for i in range(start_id, len(entries)):
            name = entries[i]
            if name in (b".", b".."):
                target = dh.inode
                if name == b".." and dh.inode.parent is not None:
                    target = self.inodes.get(dh.inode.parent, dh.inode)
                try:
                    attr = self.entry(target, self.stat_inode(target))
                except OSError:
                    continue
                if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                    return
                continue
            try:
                inode, st = self.lookup_store(dh.inode, name)
            except OSError:
                continue  # removed since the listing was taken
            if not pyfuse3.readdir_reply(token, name, self.entry(inode, st), i + 1):
                self.maybe_free(inode)
                return
            inode.nlookup += 1

    @fuse_op
    async def releasedir(self, fh: FileHandleT) -> None:
        dh = self.dirs.pop(fh, None)
        if dh is None:
            return
        with contextlib.suppress(OSError):
            os.close(dh.fd)
        dh.inode.opens -= 1
        self.maybe_free(dh.inode)

    @fuse_op
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        dh = self.dirs.get(fh)
        if dh is None:
            raise _err(errno.EBADF)
        os.fsync(dh.fd)

    @fuse_op
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.store)
        return fuseattr.statvfs_data(sv)

    @fuse_op
    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        # Only reached without default_permissions; the daemon is root, so check the bits.
        node = self.inode(inode)
        st = self.stat_inode(node)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(st.st_mode & 0o111) or node.is_dir
        if st.st_uid == ctx.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return (mode & bits) == mode

    # -- xattrs and the cross-layer lock ---------------------------------------------------------

    @fuse_op
    async def setxattr(
        self, inode: InodeT, name: FileNameT, value: bytes, ctx: RequestContext
    ) -> None:
        node = self.inode(inode)
        if crosslock.reserved(name):
            await crosslock.serve_setxattr(lambda: self.i_rwsem(node), name, value, ctx.pid)
            return
        self.check_inode(node, "setxattr")
        os.setxattr(_proc_fd(node.fd), name, value)
        self.changed(node)  # ctime; a POSIX ACL sets the mode

    @fuse_op
    async def removexattr(self, inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        node = self.inode(inode)
        if crosslock.reserved(name):
            crosslock.serve_removexattr(lambda: self.i_rwsem(node), name, ctx.pid)
            return
        self.check_inode(node, "removexattr")
        os.removexattr(_proc_fd(node.fd), name)
        self.changed(node)

    @fuse_op
    async def getxattr(self, inode: InodeT, name: FileNameT, ctx: RequestContext) -> bytes:
        node = self.inode(inode)
        if crosslock.reserved(name):
            return await crosslock.serve_getxattr(lambda: self.i_rwsem(node), name, ctx.pid)
        self.check_inode(node, "getxattr")
        return os.getxattr(_proc_fd(node.fd), name)

    @fuse_op
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[bytes]:
        node = self.inode(inode)
        self.check_inode(node, "listxattr")
        names = os.listxattr(_proc_fd(node.fd))
        out = [os.fsencode(n) for n in names]
        return [n for n in out if not crosslock.reserved(n)]

    def control_ops(self) -> dict[str, control.Handler]:
        return {"server": self._server_op}

    def describe(self) -> dict[str, Any]:
        return {
            "store": str(self.store),
            "entry_timeout": self.entry_timeout,
            "attr_timeout": self.attr_timeout,
            "inodes": len(self.inodes),
            "open_files": len(self.handles),
            "stats": dict(self.stats),
        }

    def now(self) -> float:
        return time.time()
