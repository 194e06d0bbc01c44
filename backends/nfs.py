"""The NFS personality (seeds 002, 003): the store is the export, this daemon the NFS client.

What an NFS client has and FUSE hides, over the kernel models of :mod:`stackfs.kernel`:

File handles that go stale
    An inode is a file handle: it names the object, not the name. When another client removes
    or replaces the object (``stackfs server MOUNTPOINT unlink|rename|rmdir ...``) every
    operation on the handle fails with ESTALE. The VFS retries a path-based call exactly once
    with ``LOOKUP_REVAL`` (FUSE then sends a fresh LOOKUP, which this client answers from the
    server), so ESTALE reaches a process only when the single retry cannot help: the object
    was replaced again between the retried LOOKUP and the OPEN (seed 002, Lustre's
    sanityn 31r shape; force it with the ``nfs_open`` injection point), or the call has no
    retry (read/write on a file another client deleted).
Attribute cache
    GETATTR answers from a cache that lasts ``acregmin`` (files) / ``acdirmin`` (directories)
    seconds; the kernel's own attribute timeout is 0 so every stat(2) asks this client.
Close-to-open
    open(2) fetches fresh attributes (GETATTR) and keeps the kernel's pages only if the file did
    not change since the last close; writes reach the server before close(2) returns.
Negative dentries
    A lookup that found nothing leaves a negative dentry in the modelled dcache, trusted for
    ``acdirmin`` seconds: a name another client created meanwhile stays invisible to stat(2).
    READDIR does not instantiate modelled dentries (as with ``nordirplus``).
nfs_atomic_open (Linux 4.7, fs/nfs/dir.c)
    A LOOKUP whose caller is in open(2) of that very name (read from /proc, see
    :mod:`backends.intent`) is the kernel's ``lookup_open``: a hashed negative dentry that
    revalidates goes to ``nfs_atomic_open``, whose ``open_context`` is an OPEN by name to the
    server; EISDIR/ENOTDIR (the name is a directory: ``ls``, ``cat`` on it) fall back to
    ``nfs_lookup`` and ``d_splice_alias``. With ``entry_timeout=0`` the kernel sends same-name
    LOOKUPs in parallel (shared/NOTES.md), so separate processes really race here.

Variants
    ``buggy`` (4.7-rc1): ``d_drop`` only when open_context fails with ENOENT. Openers that fail
    with EISDIR reach ``d_splice_alias`` with the dentry still hashed: ``BUG_ON(!d_unhashed)``
    (seed 003's oops, chain nfs_lookup <- nfs_atomic_open <- lookup_open <- path_openat <-
    do_filp_open, naming the real processes).
    ``fixed`` (4.7-rc3): ``d_drop`` on every open_context error (Al Viro, "Re: NFS/d_splice_alias
    breakage", LKML, 3 June 2016). Each opener unhashes the dentry before its own lookup splices
    it, which *narrows* the window without closing it: 4.7's ``do_last`` takes the directory's
    i_rwsem shared for an open without O_CREAT and ``lookup_open`` passes a revalidated hashed
    negative dentry (not an in-lookup one) to ``atomic_open``, so two openers can both hold it,
    both d_drop it and both reach ``nfs_lookup``; the second ``d_splice_alias`` then finds it
    hashed. That is seed 003, Oleg Drokin's report against this very code. The window is
    nfs_lookup's round trip (the ``nfs_lookup`` injection point): natural mode widens it,
    ``stackfs explore`` schedules it.
    ``parallel-lookup`` (4.7, commit c94c0953 "nfs_atomic_open(): prevent parallel
    nfs_lookup() on a negative hashed"): a hashed negative dentry is dropped and replaced by an
    in-lookup one from ``d_alloc_parallel``, so one task per name does open_context and the
    lookup while the others wait for its result.

An oops answers EIO to the request, and to the rest of that task's system call (a task that
oopses never comes back from its syscall; without this the VFS would retry the lookup straight
into the same BUG). ``-o panic_on_oops`` stops serving instead.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

import pyfuse3

from backends.base import ROOT, Handle, Inode, Option, ServerChange, StoreFS
from backends.intent import Intent, syscall_intent
from stackfs.kernel.dcache import Dentry
from stackfs.kernel.events import Oops
from stackfs.kernel.task import Task, calls, running_as

#: the VFS above an OPEN by file handle (what the kernel does after the lookup)
OPEN_BY_HANDLE_CHAIN = (
    "entry_SYSCALL_64_fastpath",
    "sys_open",
    "do_sys_open",
    "do_filp_open",
    "path_openat",
    "do_dentry_open",
    "nfs4_file_open",
)


def _estale(what: str) -> OSError:
    return OSError(errno.ESTALE, f"stale file handle: {what}")


class NFSFS(StoreFS):
    """An NFS client over the store (the export)."""

    kind = "nfs"
    variants = {
        "buggy": "nfs_atomic_open d_drops only on ENOENT: failed openers d_splice_alias a "
        "hashed dentry (BUG, seed 003)",
        "fixed": "d_drop on every open_context error (Linux 4.7-rc3): narrows the window, "
        "two openers that both d_drop before either splices still BUG (seed 003)",
        "parallel-lookup": "d_alloc_parallel in nfs_atomic_open: one lookup per name at a "
        "time (Linux 4.7)",
    }
    #: the release each variant's model stands for (fs/nfs/dir.c, fs/dcache.c of that release)
    releases = {"buggy": "4.7-rc1", "fixed": "4.7-rc3", "parallel-lookup": "4.7"}
    injection_points = {
        "nfs_atomic_open": "entry of nfs_atomic_open: every opener of the negative dentry",
        "nfs_open_context": "after open_context's OPEN round trip to the server, before d_drop",
        "nfs_lookup": "nfs_lookup's LOOKUP round trip (between d_drop and d_splice_alias)",
        "nfs_open": "an OPEN by file handle, before the server checks the handle",
    }
    extra_options = (
        Option("acregmin", float, 3.0, "seconds the attribute cache trusts a file's attributes"),
        Option(
            "acdirmin", float, 30.0, "seconds for directories' attributes and negative dentries"
        ),
    )
    option_defaults = {"entry_timeout": 0.0, "attr_timeout": 0.0}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.acregmin = float(self.opts["acregmin"])
        self.acdirmin = float(self.opts["acdirmin"])
        self.dc = self.kernel.dcache("nfs")
        #: when each modelled dentry was last validated against the server
        self.d_time: dict[int, float] = {}
        #: system calls that oopsed, (tid, /proc/TID/syscall, path) -> when: the task is dead
        #: in the model, so the VFS's retry of its lookup is answered EIO (once)
        self.dead: dict[tuple[int, str, bytes | None], float] = {}

    # -- file handles ----------------------------------------------------------------------------

    def handle_stale(self, inode: Inode) -> bool:
        """Whether the server no longer has the object of this file handle."""
        if inode.ino == ROOT:
            return False
        if inode.extra.get("stale"):
            return True
        if self.object_gone(inode) and not inode.extra.get("client_unlinked"):
            inode.extra["stale"] = True
            return True
        return False

    def check_inode(self, inode: Inode, op: str) -> None:
        if op == "open":
            return  # checked by the server in open_inode, after the nfs_open round trip
        if inode.extra.get("stale"):
            self.count("estale")
            raise _estale(self.path_of(inode))

    def check_handle(self, handle: Handle, op: str) -> None:
        if handle.inode.extra.get("stale"):
            self.count("estale")
            raise _estale(self.path_of(handle.inode))

    def name_changed(
        self, parent: Inode, name: bytes, inode: Inode | None, by_server: bool
    ) -> None:
        if by_server:
            # another client: this client is not told; the handle is stale if the object is gone
            if inode is not None:
                self.handle_stale(inode)
            return
        if inode is not None and inode.ino != ROOT:
            inode.extra.pop("attrs", None)  # nlink and ctime changed
            try:
                gone = os.fstat(inode.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                inode.extra["client_unlinked"] = True  # NFS silly-renames what it has open
        d = self.dc.d_lookup(parent.ino, name)
        if d is not None:
            self.dc.d_drop(d)
            self.dc.dput(d)

    def name_created(self, parent: Inode, name: bytes, inode: Inode) -> None:
        old = self.dc.d_lookup(parent.ino, name)
        if old is not None:
            self.dc.d_drop(old)
            self.dc.dput(old)
        d = self.dc.d_alloc(parent.ino, name)
        self.dc.d_add(d, inode.ino)
        self.d_time[d.id] = time.monotonic()
        self.dc.dput(d)

    # -- attribute cache and close-to-open -------------------------------------------------------

    def nfs_getattr(self, inode: Inode) -> os.stat_result:
        """GETATTR from the server; refreshes the attribute cache."""
        if self.handle_stale(inode):
            self.count("estale")
            raise _estale(self.path_of(inode))
        st = os.fstat(inode.fd)
        inode.extra["attrs"] = (st, time.monotonic())
        return st

    def stat_inode(self, inode: Inode) -> os.stat_result:
        return self.nfs_getattr(inode)

    def getattr_inode(self, inode: Inode) -> os.stat_result:
        cached = inode.extra.get("attrs")
        timeout = self.acdirmin if inode.is_dir else self.acregmin
        if cached is not None and time.monotonic() - cached[1] < timeout:
            self.count("attr_cache_hits")
            return cached[0]
        return self.nfs_getattr(inode)

    async def open_inode(self, inode: Inode, flags: int, ctx) -> int:
        """OPEN by file handle (``nfs4_file_open``): ESTALE if the server lost the object."""
        with running_as(Task.from_pid(ctx.pid)), calls(*OPEN_BY_HANDLE_CHAIN):
            await self.kernel.inject.hit("nfs_open")
            self.count("open_by_handle")
            if self.handle_stale(inode):
                self.count("estale")
                raise _estale(self.path_of(inode))
            return await super().open_inode(inode, flags, ctx)

    async def open_hook(self, handle: Handle, ctx) -> None:
        """Close-to-open: fresh attributes at open; keep the pages only if nothing changed."""
        st = os.fstat(handle.fd)
        handle.inode.extra["attrs"] = (st, time.monotonic())
        await super().open_hook(handle, ctx)

    def wrote(self, handle: Handle, off: int, size: int) -> None:
        super().wrote(handle, off, size)
        handle.inode.extra.pop("attrs", None)

    def changed(self, *inodes: Inode | None) -> None:
        """The client's own change: its cached attributes of these inodes are out of date."""
        for inode in inodes:
            if inode is not None:
                inode.extra.pop("attrs", None)

    # -- LOOKUP: the path walk and lookup_open ---------------------------------------------------

    async def lookup_entry(self, parent: Inode, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            return await super().lookup_entry(parent, name, ctx)
        intent = syscall_intent(ctx.pid, name)
        key = (ctx.pid, intent.raw, intent.path)
        if intent.raw and self.dead.pop(key, 0.0) > time.monotonic() - 2.0:
            raise OSError(errno.EIO, "this task oopsed in this system call")
        task = Task.from_pid(ctx.pid)
        self.count("lookup")
        try:
            with running_as(task), calls(*intent.chain()):
                if intent.open and not intent.flags & os.O_CREAT:
                    with calls("lookup_open"):
                        ino = await self.lookup_open(parent, name, intent)
                else:
                    with calls("walk_component"):
                        ino = await self.lookup_path(parent, name)
        except Oops:
            if intent.raw:
                if len(self.dead) > 256:
                    self.dead.clear()
                self.dead[key] = time.monotonic()
            raise
        if ino is None:
            raise OSError(errno.ENOENT, "no such file")
        inode = self.inodes.get(ino)
        if inode is None:
            raise _estale(f"ino {ino}")
        st = self.getattr_inode(inode)
        inode.nlookup += 1
        return self.entry(inode, st)

    def nfs_lookup_revalidate(self, parent: Inode, name: bytes, d: Dentry) -> bool:
        """``nfs_lookup_revalidate``: a dentry is trusted for ``acdirmin`` (the directory's
        attribute cache); after that a positive one is checked by a LOOKUP on the server. One
        whose file handle turned out stale is not trusted: that is the ``LOOKUP_REVAL`` walk
        the VFS retries with after ESTALE."""
        now = time.monotonic()
        fresh = now - self.d_time.get(d.id, 0.0) < self.acdirmin
        if d.inode is None:
            return fresh
        inode = self.inodes.get(d.inode)
        if inode is None or self.handle_stale(inode):
            return False
        if fresh:
            return True
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != inode.key:
            return False
        self.d_time[d.id] = now
        inode.extra["attrs"] = (st, now)
        return True

    def _cached(self, parent: Inode, name: bytes) -> Dentry | None:
        """``lookup_dcache``: the hashed dentry if it revalidates (referenced), else None."""
        d = self.dc.d_lookup(parent.ino, name)
        if d is None:
            return None
        with calls("d_revalidate", "nfs_lookup_revalidate"):
            valid = self.nfs_lookup_revalidate(parent, name, d)
        if valid:
            return d
        self.dc.d_invalidate(d)
        self.dc.dput(d)
        return None

    async def lookup_path(self, parent: Inode, name: bytes) -> int | None:
        """``walk_component``: lookup_fast (revalidate) or lookup_slow (d_alloc_parallel)."""
        with calls("lookup_fast"):
            d = self._cached(parent, name)
        if d is None:
            with calls("lookup_slow"):
                d = await self.dc.d_alloc_parallel(parent.ino, name)
        with self.dc.ref(d):
            try:
                if d.in_lookup:
                    with calls("lookup_slow", "nfs_lookup"):
                        await self.nfs_lookup(parent, name, d)
            finally:
                self.dc.d_lookup_done(d)
            return d.inode

    async def nfs_lookup(self, parent: Inode, name: bytes, d: Dentry) -> None:
        """``nfs_lookup``: LOOKUP on the server, then ``d_splice_alias`` (positive or not)."""
        await self.kernel.inject.hit("nfs_lookup")
        try:
            inode, st = self.lookup_store(parent, name)
        except FileNotFoundError:
            ino = None
        else:
            ino = inode.ino
            inode.extra["attrs"] = (st, time.monotonic())
        self.count("nfs_lookup")
        self.dc.d_splice_alias(ino, d)
        self.d_time[d.id] = time.monotonic()

    async def lookup_open(self, parent: Inode, name: bytes, intent: Intent) -> int | None:
        """``lookup_open`` (fs/namei.c, 4.7): a positive dentry needs no atomic_open."""
        d = self._cached(parent, name)
        if d is None:
            d = await self.dc.d_alloc_parallel(parent.ino, name)
        with self.dc.ref(d):
            try:
                if d.inode is not None and not d.in_lookup:
                    return d.inode  # out_no_open: the OPEN by handle checks it
                with calls("nfs_atomic_open"):
                    return await self.nfs_atomic_open(parent, name, d, intent.flags)
            finally:
                self.dc.d_lookup_done(d)

    def open_context(self, parent: Inode, name: bytes, flags: int) -> tuple[int, int | None]:
        """``NFS_PROTO(dir)->open_context``: an OPEN by name on the server: (errno, ino)."""
        self.count("open_context")
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError as exc:
            return exc.errno or errno.EIO, None
        if stat.S_ISDIR(st.st_mode):
            return errno.EISDIR, None  # NFS4ERR_ISDIR: OPEN is for regular files
        if stat.S_ISLNK(st.st_mode):
            return errno.ELOOP, None  # NFS4ERR_SYMLINK
        if flags & os.O_DIRECTORY:
            return errno.ENOTDIR, None
        try:
            inode, _st = self.lookup_store(parent, name)
        except OSError as exc:
            return exc.errno or errno.EIO, None
        return 0, inode.ino

    async def nfs_atomic_open(self, parent: Inode, name: bytes, d: Dentry, flags: int):
        """``nfs_atomic_open`` (fs/nfs/dir.c), per variant; returns the ino or None."""
        await self.kernel.inject.hit("nfs_atomic_open")
        switched = False
        if self.variant == "parallel-lookup" and not d.in_lookup:
            # c94c0953: never run nfs_lookup on a hashed negative dentry in parallel
            self.dc.d_drop(d)
            d = await self.dc.d_alloc_parallel(parent.ino, name)
            switched = True
            if not d.in_lookup:
                return d.inode  # finish_no_open: another task looked it up meanwhile
        try:
            with calls("nfs4_atomic_open", "nfs4_do_open"):
                err, ino = self.open_context(parent, name, flags)
                await self.kernel.inject.hit("nfs_open_context")
            if not err:
                if not (d.hashed and d.inode == ino):
                    self.dc.d_drop(d)
                    self.dc.d_add(d, ino)
                self.d_time[d.id] = time.monotonic()
                return ino
            if self.variant == "buggy":
                if err == errno.ENOENT:
                    self.dc.d_drop(d)
            else:
                self.dc.d_drop(d)
            if err == errno.ENOENT:
                self.dc.d_add(d, None)
                self.d_time[d.id] = time.monotonic()
                return None
            if err in (errno.EISDIR, errno.ENOTDIR) or (
                err == errno.ELOOP and not flags & os.O_NOFOLLOW
            ):
                # no_open:
                with calls("nfs_lookup"):
                    await self.nfs_lookup(parent, name, d)
                return d.inode
            raise OSError(err, os.strerror(err))
        finally:
            if switched:
                self.dc.d_lookup_done(d)
                self.dc.dput(d)

    # -- another client --------------------------------------------------------------------------

    async def on_server_change(self, change: ServerChange) -> None:
        """NFS has no callbacks: the client learns of the change when its caches time out or
        a file handle turns out stale."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["acregmin"] = self.acregmin
        out["acdirmin"] = self.acdirmin
        dentries = self.dc.snapshot()
        out["dentries"] = len(dentries)
        out["dcache"] = dentries[-200:]  # the newest; the whole cache can be large
        out["stale_handles"] = sum(1 for i in self.inodes.values() if i.extra.get("stale"))
        return out
