"""The AFS personality (seed 000): the store is the fileserver, this daemon the cache manager.

OpenAFS keeps, per file (``struct vcache``), the data version the fileserver reported
(``f.m.DataVersion``) and the version whose pages the kernel has mapped (``mapDV``). Whole-file
data lives in the cache manager's cache (a ``dcache`` chunk; here an anonymous memfd per file),
reads and writes go to the cache, and writes go back to the fileserver on close and fsync
(``afs_StoreAllSegments``). Another client changing the fileserver (``stackfs server ...``)
breaks the callback, so the next open, GETATTR or READ fetches the new status, and the data
again when its version is not the status' DataVersion: what a client reports of a file, size and
data, is always one version's (``afs_linux_getattr``, ``afs_GenericRead -> afs_GetDCache``).

``afs_linux_open -> afs_open``: when ``DataVersion > mapDV`` the kernel's pages are stale and
``osi_FlushPages -> osi_VM_FlushPages`` drops them, for real here (``pyfuse3.invalidate_inode``;
``keep_cache`` is on otherwise, so without that flush the kernel would serve the old pages).
``osi_VM_FlushPages`` takes the inode's i_mutex (``afs_linux_lock_inode``) to protect
``truncate_inode_pages``. That is the deadlock of seed 000: aufs copy-up locks the lower inode's
i_mutex, then opens the file, and the open takes the same i_mutex again.

Variants
    ``buggy``: flush under the inode's modelled i_rwsem (exclusive), inside open, taken for the
    calling task. A task that already holds it (``setxattr trusted.stackfs.i_rwsem``, as a
    layer above does) waits forever: a recursive-locking event names holder and waiter.
    ``fixed``: never flush under the lock in open. The open answers without ``keep_cache``, so
    the kernel itself drops the stale pages after the reply (``fuse_finish_open``), and reads
    go on through the cache manager: what the OpenAFS thread proposed (flush in read/mmap
    paths, not in ``.open``).

Data versions are the fileserver's: a file's version goes up each time its contents
(mtime, size) on the store change, whoever changed them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import pyfuse3

from backends.base import Handle, Inode, Option, ServerChange, StoreFS
from stackfs.kernel.task import Task, calls, running_as

#: the VFS part of an open(2), outermost first (what a stack trace above afs_linux_open shows)
OPEN_CHAIN = ("do_sys_open", "do_filp_open", "path_openat", "vfs_open", "do_dentry_open")


@dataclass
class VCache:
    """``struct vcache``: what the cache manager knows about one file."""

    dv: int = 0  # f.m.DataVersion, as last fetched from the fileserver
    map_dv: int = 0  # mapDV: the version of the pages the kernel has
    callback: bool = False  # CStatd: the fileserver's callback promise holds
    callback_at: float = 0.0
    cache_fd: int | None = None  # the cached data (a dcache chunk holding the whole file)
    cache_dv: int = -1  # version of the data in the cache
    dirty: bool = False  # the cache has writes the fileserver has not seen
    mtime_ns: int | None = None  # the client's modification time, sent with StoreData

    def to_json(self) -> dict[str, Any]:
        return {
            "dv": self.dv,
            "map_dv": self.map_dv,
            "callback": self.callback,
            "cache_dv": self.cache_dv,
            "dirty": self.dirty,
        }


class AFSFS(StoreFS):
    """An AFS cache manager over the store (the fileserver)."""

    kind = "afs"
    variants = {
        "buggy": "afs_open flushes the page cache under the inode's i_mutex (OpenAFS, 2014)",
        "fixed-afs": "no flush under the lock in open: the kernel drops stale pages after the "
        "reply",
    }
    #: the scenario's name (aufs-afs-copyup's fixed-afs) is the variant's; ``fixed`` stays
    variant_aliases = {"fixed": "fixed-afs"}
    injection_points = {
        "afs_open": "afs_open after FetchStatus/FetchData, before the flush decision",
        "afs_store_data": "the StoreData round trip of afs_StoreAllSegments (close, fsync)",
    }
    extra_options = (
        Option(
            "callback_timeout",
            float,
            60.0,
            "seconds a callback promise lasts (a status fetched is trusted that long)",
        ),
    )
    #: callbacks keep the kernel's names and attributes valid; the cache manager decides
    option_defaults = {"entry_timeout": 60.0, "attr_timeout": 60.0}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.callback_timeout = float(self.opts["callback_timeout"])
        #: the fileserver's data versions: store identity -> [version, (mtime_ns, size)]
        self.fileserver: dict[tuple[int, int], list[Any]] = {}

    # -- fileserver ------------------------------------------------------------------------------

    def server_dv(self, inode: Inode) -> int:
        """The fileserver's data version of ``inode`` (bumped when its contents changed)."""
        st = os.fstat(inode.fd)
        sig = (st.st_mtime_ns, st.st_size)
        rec = self.fileserver.get(inode.key)
        if rec is None:
            rec = self.fileserver[inode.key] = [1, sig]
        elif rec[1] != sig:
            rec[0] += 1
            rec[1] = sig
        return rec[0]

    # -- vcache ----------------------------------------------------------------------------------

    def vcache(self, inode: Inode) -> VCache:
        vc = inode.extra.get("vcache")
        if vc is None:
            vc = inode.extra["vcache"] = VCache()
        return vc

    def free_inode(self, inode: Inode) -> None:
        vc = inode.extra.get("vcache")
        if vc is not None and vc.cache_fd is not None:
            with contextlib.suppress(OSError):
                os.close(vc.cache_fd)
            vc.cache_fd = None

    def afs_verify_vcache(self, inode: Inode, vc: VCache) -> None:
        """``afs_VerifyVCache``: without a valid callback, FetchStatus from the fileserver."""
        now = time.time()
        if vc.callback and now - vc.callback_at < self.callback_timeout:
            return
        with calls("afs_VerifyVCache", "afs_FetchStatus"):
            vc.dv = self.server_dv(inode)
        vc.callback, vc.callback_at = True, now
        self.count("fetch_status")

    def afs_get_dcache(self, inode: Inode, vc: VCache) -> int:
        """``afs_GetDCache``: the cache file, fetched from the fileserver if out of date."""
        if vc.cache_fd is None:
            vc.cache_fd = os.memfd_create(f"afs-cache:{inode.ino}", os.MFD_CLOEXEC)
            vc.cache_dv = -1
        if vc.cache_dv != vc.dv and not vc.dirty:
            with calls("afs_GetDCache", "afs_FetchData"):
                src = os.open(f"/proc/self/fd/{inode.fd}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _copy_all(src, vc.cache_fd)
                finally:
                    os.close(src)
            vc.cache_dv = vc.dv
            self.count("fetch_data")
        return vc.cache_fd

    async def afs_store_all_segments(self, inode: Inode, vc: VCache) -> None:
        """``afs_StoreAllSegments``: write the dirty cache back to the fileserver."""
        if not vc.dirty or vc.cache_fd is None:
            return
        with calls("afs_StoreAllSegments", "afs_StoreData"):
            await self.kernel.inject.hit("afs_store_data")
            dst = os.open(f"/proc/self/fd/{inode.fd}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                _copy_all(vc.cache_fd, dst)
                if vc.mtime_ns is not None:  # AFSStoreStatus.ClientModTime
                    os.utime(dst, ns=(os.fstat(dst).st_atime_ns, vc.mtime_ns))
            finally:
                os.close(dst)
        vc.dirty = False
        vc.mtime_ns = None
        new = self.server_dv(inode)
        if vc.map_dv == vc.dv:
            vc.map_dv = new  # the kernel's pages hold the data just stored
        vc.dv = vc.cache_dv = new
        self.count("store_data")

    # -- open: afs_linux_open -> afs_open -> osi_FlushPages ----------------------------------------

    async def open_inode(self, inode: Inode, flags: int, ctx) -> int:
        if not stat.S_ISREG(inode.kind):
            return await super().open_inode(inode, flags, ctx)
        return os.dup(await self.afs_open_data(inode, flags))

    async def created_fd(self, inode: Inode, fd: int, flags: int, ctx) -> int:
        os.close(fd)
        return os.dup(await self.afs_open_data(inode, flags))

    async def afs_open_data(self, inode: Inode, flags: int) -> int:
        vc = self.vcache(inode)
        self.afs_verify_vcache(inode, vc)
        cache_fd = self.afs_get_dcache(inode, vc)
        if flags & os.O_TRUNC and os.fstat(cache_fd).st_size:
            os.ftruncate(cache_fd, 0)
            vc.dirty = True
        return cache_fd

    async def open_hook(self, handle: Handle, ctx: pyfuse3.RequestContext) -> None:
        inode = handle.inode
        if not stat.S_ISREG(inode.kind):
            await super().open_hook(handle, ctx)
            return
        handle.keep_cache = True
        vc = self.vcache(inode)
        task = Task.from_pid(ctx.pid)
        with running_as(task), calls(*OPEN_CHAIN, "afs_linux_open", "afs_open"):
            await self.kernel.inject.hit("afs_open")
            if vc.dv <= vc.map_dv:
                return
            if self.variant == "buggy":
                await self.osi_flush_pages(inode, vc, task)
            else:
                # fixed: nothing under the lock here; the reply asks the kernel to drop the
                # inode's pages itself once the open is answered (no FOPEN_KEEP_CACHE)
                handle.keep_cache = False
                vc.map_dv = vc.dv
                self.count("flush_after_reply")

    async def osi_flush_pages(self, inode: Inode, vc: VCache, task: Task) -> None:
        """``osi_FlushPages -> osi_VM_FlushPages``: under the inode's i_mutex, drop the pages."""
        with calls("osi_FlushPages"):
            if vc.dv <= vc.map_dv:
                return
            with calls("osi_VM_FlushPages"):
                sem = self.i_rwsem(inode)
                with calls("afs_linux_lock_inode"):
                    await sem.down_write(task)
                try:
                    with calls("truncate_inode_pages"):
                        await self.invalidate_pages(inode)
                finally:
                    sem.up_write(task)
            vc.map_dv = vc.dv
            self.count("flush_in_open")

    # -- data ------------------------------------------------------------------------------------

    async def read_hook(self, handle: Handle) -> None:
        """``afs_linux_read_iter -> afs_GenericRead``: verify the status (``afs_VerifyVCache``),
        then fetch the data again if the cache's version is not the status' DataVersion
        (``afs_GetDCache``, ``afs_IsDCacheFresh``). A callback break between the open and the
        read thus gives the new version's data with the new version's size, never the cache
        filled at open padded to the new size. The handle reads the cache file itself (a dup
        of it), so a refetch is what it reads."""
        inode = handle.inode
        if stat.S_ISREG(inode.kind):
            vc = self.vcache(inode)
            self.afs_verify_vcache(inode, vc)
            self.afs_get_dcache(inode, vc)

    def wrote(self, handle: Handle, off: int, size: int) -> None:
        handle.dirty = True
        if stat.S_ISREG(handle.inode.kind):
            vc = self.vcache(handle.inode)
            vc.dirty = True
            vc.mtime_ns = time.time_ns()

    def times_set(self, inode: Inode, attr, fields) -> None:
        """utimensat(2) with unstored writes: the mtime goes to the fileserver with them."""
        vc = inode.extra.get("vcache")
        if vc is not None and fields.update_mtime:
            vc.mtime_ns = attr.st_mtime_ns

    async def flush_hook(self, handle: Handle) -> None:
        """``afs_linux_flush``: close(2) stores the dirty cache back."""
        if stat.S_ISREG(handle.inode.kind):
            await self.afs_store_all_segments(handle.inode, self.vcache(handle.inode))

    async def fsync_hook(self, handle: Handle, datasync: bool) -> None:
        """``afs_linux_fsync``: store back."""
        if stat.S_ISREG(handle.inode.kind):
            await self.afs_store_all_segments(handle.inode, self.vcache(handle.inode))
        else:
            await super().fsync_hook(handle, datasync)

    async def setattr_hook(self, inode, attr, fields, handle) -> bool:
        """``afs_setattr`` with a size: truncate the cache and the fileserver's file."""
        if not stat.S_ISREG(inode.kind):
            return False
        vc = self.vcache(inode)
        self.afs_verify_vcache(inode, vc)
        cache_fd = self.afs_get_dcache(inode, vc)
        os.ftruncate(cache_fd, attr.st_size)
        vc.dirty = True
        if fields.update_mtime:
            vc.mtime_ns = attr.st_mtime_ns
        await self.afs_store_all_segments(inode, vc)
        return True

    def overlay_stat(self, inode: Inode, st: os.stat_result) -> Any:
        """The status this client reports is the vcache's (``afs_linux_getattr ->
        afs_linux_revalidate -> afs_getattr``): without a callback, FetchStatus first
        (``afs_VerifyVCache``), so the size and the DataVersion the read path checks its cache
        against move together; while the cache holds unstored writes, its size and mtime."""
        vc = inode.extra.get("vcache")
        if vc is None:
            return st
        self.afs_verify_vcache(inode, vc)
        if not vc.dirty or vc.cache_fd is None:
            return st
        cst = os.fstat(vc.cache_fd)
        mtime = vc.mtime_ns if vc.mtime_ns is not None else st.st_mtime_ns
        return _StatView(st, st_size=cst.st_size, st_blocks=cst.st_blocks, st_mtime_ns=mtime)

    # -- another client --------------------------------------------------------------------------

    async def on_server_change(self, change: ServerChange) -> None:
        """The fileserver breaks callbacks (``RXAFSCB_CallBack``): the file's status and data
        are fetched again at the next open. Names in a changed directory are revalidated."""
        for inode in (change.inode, change.replaced):
            if inode is not None and "vcache" in inode.extra:
                inode.extra["vcache"].callback = False
                self.count("callback_breaks")
                # the status is no longer valid (CStatd cleared): the kernel must ask again
                # for size and times, but keeps the pages until the open flushes them
                await self.invalidate_pages(inode, attr_only=True)
        if change.action not in ("write", "truncate") or change.created:
            await self.invalidate_kernel(change)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["vcaches"] = {
            str(i.ino): {"path": self.path_of(i), **i.extra["vcache"].to_json()}
            for i in list(self.inodes.values())[:200]
            if "vcache" in i.extra
        }
        return out


def _copy_all(src: int, dst: int) -> None:
    """Make ``dst``'s contents those of ``src`` (whole file, from offset 0)."""
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    off = 0
    while off < size:
        chunk = os.pread(src, min(1 << 20, size - off), off)
        if not chunk:
            break
        os.pwrite(dst, chunk, off)
        off += len(chunk)
    if off < size:
        os.ftruncate(dst, off)


class _StatView:
    """An ``os.stat_result`` with some fields replaced."""

    def __init__(self, st: os.stat_result, **fields: int) -> None:
        self._st = st
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        if name in self._fields:
            return self._fields[name]
        return getattr(self._st, name)
