"""Copy-up and pseudo-links: make an upper copy of a lower object before it is modified (aufs
``au_cpup_single``), and keep every name of a hard-linked lower file seeing one object (aufs
``plink``). The whole path is in this module:

* :class:`CopyUpper` — what the request handlers call (``copy_up``, ``copy_up_dir``,
  ``hide_lower_name``, ``lower_name_gone``, ``gc_plink``, ``data_loc``, ``nlink``):
  parents first, one copy-up per inode at a time, inline or in a worker thread, pseudo-links
  made, linked into place and dropped;
* :class:`CopyUp` — one copy-up, step by step (below);
* :func:`link_up` — one more name of an inode whose data is up already.

The steps of one copy-up are explicit methods, run in this order by :meth:`CopyUp.run`, in ONE
thread (the union calls ``run`` through :func:`stackfs.runtime.daemon.in_worker`, so that the layer
below sees one task take its inode lock, open the file, read it and drop the lock):

1. :meth:`take_source` — stat the lower object; with ``copyup=aufs`` or ``aufs-unlock`` take the
   lower inode's ``i_rwsem`` (on a stackfs lower: ``setxattr trusted.stackfs.i_rwsem write``),
   as aufs holds the lower ``i_mutex`` across the copy so that the source cannot change under it.
2. :meth:`open_source` — open the lower file. ``copyup=aufs`` opens it *with the lock held*, as
   aufs did in 2014 (``au_cp_regular`` -> ``dentry_open`` under ``vfsub_inode_lock``): over
   OpenAFS, whose ``afs_linux_open`` -> ``osi_VM_FlushPages`` takes the same i_mutex, the task
   deadlocks on itself (seed 000). ``copyup=aufs-unlock`` is the 2024 fix
   (``au_test_fs_unlock_for_open``): drop the lock, open, take it again.
3. the ``copy_up`` injection point;
4. :meth:`copy` — build the copy in the work directory: data with ``SEEK_DATA``/``SEEK_HOLE`` and
   ``copy_file_range`` (``sendfile`` across filesystems), holes stay holes; then owner, mode,
   xattrs and times.
5. :meth:`commit` — record the inode number (xino) and, for a hard-linked lower file, the
   pseudo-link ``WORK/plink/UINO``; then rename the copy into place. A SIGKILL before the
   rename leaves only a temporary file in ``WORK/tmp`` (removed at the next mount): the upper
   name is either absent or complete.
6. :meth:`release` — drop the lock, close, clean up.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any

import trio

from stackfs.kernel.task import calls
from stackfs.runtime import crosslock
from stackfs.runtime.daemon import in_worker
from stackfs.union import whiteout
from stackfs.union.branches import Branch, Path
from stackfs.union.inode import Node
from stackfs.union.renamegate import RenameGate
from stackfs.union.sbinfo import PLINK_DIR, TMP_DIR, SbInfo, plink_path
from stackfs.union.xino import Xino

CHUNK = 16 << 20
#: a copy-up between plain directories of a file up to this size runs in the trio thread (it
#: costs less than the hop to a worker thread)
INLINE_MAX = 256 << 10
_counter = itertools.count()


def _copy_range(src_fd: int, dst_fd: int, pos: int, end: int) -> int:
    """Copy bytes [pos, end) in the kernel; returns where it stopped (short: the source
    shrank under us)."""
    while pos < end:
        n = min(end - pos, CHUNK)
        try:
            done = os.copy_file_range(src_fd, dst_fd, n, pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            os.lseek(dst_fd, pos, os.SEEK_SET)
            done = os.sendfile(dst_fd, src_fd, pos, n)
        if done <= 0:
            break
        pos += done
    return pos


def copy_data(src_fd: int, dst_fd: int, size: int, blocks: int | None = None) -> None:
    """Copy ``size`` bytes, skipping holes (SEEK_DATA/SEEK_HOLE), in the kernel. ``blocks``
    (the source's st_blocks): when they cover ``size`` there is (almost surely) no hole and
    the two seeks per extent are skipped, so a small file is one ``copy_file_range`` (a hole
    hidden by blocks allocated past EOF is then copied as zeros: same content, not sparse)."""
    if blocks is not None and blocks * 512 >= size:
        if _copy_range(src_fd, dst_fd, 0, size) != size:
            os.ftruncate(dst_fd, size)  # the source shrank
        return
    off = 0
    copied_to = 0
    while off < size:
        try:
            data = os.lseek(src_fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        try:
            hole = min(os.lseek(src_fd, data, os.SEEK_HOLE), size)
        except OSError:
            hole = size
        pos = _copy_range(src_fd, dst_fd, data, hole)
        if pos < hole:
            hole = pos  # the source shrank under us
        copied_to = pos
        off = max(hole, off + 1)
    if copied_to != size:
        os.ftruncate(dst_fd, size)  # a hole at the end (or the source shrank)


def copy_xattrs_fd(src_fd: int, dst_fd: int, skip: tuple[str, ...]) -> None:
    """Copy the xattrs but the ``skip`` namespaces (the layers' own business: the union's
    metadata names, :func:`stackfs.union.whiteout.meta_xattrs`)."""
    try:
        names = os.listxattr(src_fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return
        raise
    for name in names:
        if name.startswith(skip):
            continue
        try:
            os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENODATA):
                raise


class CopyUp:
    """One copy-up of ``src_path`` in branch ``src`` to ``dst_parent/name`` in ``upper``."""

    def __init__(
        self,
        *,
        src: Branch,
        src_path: Path,
        upper: Branch,
        dst_parent: Path,
        name: bytes,
        work: Branch,
        xino: Xino,
        uino: int,
        mode: str = "plain",
        plink: bool = False,
        hit: Callable[[str], None] | None = None,
        restore_parent_times: bool = True,
    ) -> None:
        self.src, self.src_path = src, src_path
        self.skip_xattrs = whiteout.meta_xattrs(src.userxattr)
        self.upper, self.dst_parent, self.name = upper, dst_parent, name
        self.work, self.xino, self.uino = work, xino, uino
        self.mode = mode
        #: make a pseudo-link if the source is a hard-linked regular file
        self.plink = plink
        self.plinked = False
        #: copy to the pseudo-link only (dst is WORK/plink/UINO): the name is gone
        self.orphan = False
        self.hit = hit
        self.restore_parent_times = restore_parent_times
        self.st: os.stat_result | None = None
        #: the source's lstat, when the caller has just made it (saves take_source a stat)
        self.st_hint: os.stat_result | None = None
        self.locked = False
        self.src_fd = -1
        self.tmp: Path = (TMP_DIR, f"cu.{uino}.{os.getpid()}.{next(_counter)}".encode())
        self.tmp_made = False
        #: the temporary copy's fstat once its data and attributes are in (regular files)
        self.tmp_st: os.stat_result | None = None
        self.committed = False
        self.target: bytes | None = None

    # -- the steps -------------------------------------------------------------------------------

    def run(self) -> os.stat_result:
        """take the source, open it, copy, commit; always release. Returns the upper stat."""
        self.take_source()
        try:
            self.open_source()
            if self.hit is not None:
                self.hit("copy_up")
            self.copy()
            return self.commit()
        finally:
            self.release()

    def _cross_layer_lock(self) -> bool:
        return (
            self.mode in ("aufs", "aufs-unlock")
            and self.src.stackfs
            and self.st is not None
            and stat_mod.S_ISREG(self.st.st_mode)
        )

    def lock_source(self) -> None:
        """down_write the lower inode's i_rwsem (cross-layer: :mod:`stackfs.runtime.crosslock`)."""
        self.locked = crosslock.lock(self.src.getxattr, self.src_path, "write")

    def unlock_source(self) -> None:
        if not self.locked:
            return
        self.locked = False
        crosslock.unlock(self.src.getxattr, self.src_path)

    def take_source(self) -> None:
        self.st = self.st_hint if self.st_hint is not None else self.src.stat(self.src_path)
        if self._cross_layer_lock():
            self.lock_source()

    def open_source(self) -> None:
        st = self.st
        assert st is not None
        if stat_mod.S_ISREG(st.st_mode):
            relock = self.locked and self.mode == "aufs-unlock"
            if relock:
                self.unlock_source()  # au_test_fs_unlock_for_open: drop before open
            try:
                self.src_fd = self.src.open(self.src_path, os.O_RDONLY | os.O_NOFOLLOW)
                # what is copied is what was opened: a write between the stat and the open
                # (another client, the page cache flushed by the open) must not tear the copy
                self.st = os.fstat(self.src_fd)
            finally:
                if relock:
                    self.lock_source()
        elif stat_mod.S_ISLNK(st.st_mode):
            self.target = self.src.readlink(self.src_path)

    def copy(self) -> None:
        st = self.st
        assert st is not None
        w = self.work
        mode = st.st_mode
        if stat_mod.S_ISREG(mode):
            fd = w.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.tmp_made = True
            try:
                copy_data(self.src_fd, fd, st.st_size, st.st_blocks)
                if (st.st_uid, st.st_gid) != w.new_owner:
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat_mod.S_IMODE(mode))
                copy_xattrs_fd(self.src_fd, fd, self.skip_xattrs)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                self.tmp_st = os.fstat(fd)  # what commit() returns (saves a path lookup)
            finally:
                os.close(fd)
            return
        if stat_mod.S_ISDIR(mode):
            w.mkdir(self.tmp, 0o700)
            self.tmp_made = True
            fd = w.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat_mod.S_IMODE(mode))
                sfd = self.src.open(self.src_path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    copy_xattrs_fd(sfd, fd, self.skip_xattrs)
                finally:
                    os.close(sfd)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            return
        if stat_mod.S_ISLNK(mode):
            assert self.target is not None
            w.symlink(self.target, self.tmp)
            self.tmp_made = True
            w.chown(self.tmp, st.st_uid, st.st_gid)
            w.utime(self.tmp, (st.st_atime_ns, st.st_mtime_ns))
            return
        # device nodes, FIFOs, sockets
        w.mknod(self.tmp, stat_mod.S_IFMT(mode) | 0o600, st.st_rdev)
        self.tmp_made = True
        w.chown(self.tmp, st.st_uid, st.st_gid)
        w.chmod(self.tmp, stat_mod.S_IMODE(mode))
        w.utime(self.tmp, (st.st_atime_ns, st.st_mtime_ns))

    def commit(self) -> os.stat_result:
        w = self.work
        tst = self.tmp_st if self.tmp_st is not None else w.stat(self.tmp)
        # xino first: whatever a lookup can see after the rename has its old number
        self.xino.set_override(tst.st_ino, self.uino)
        st = self.st
        assert st is not None
        if self.orphan:
            # the copy IS the pseudo-link; the lower names but the removed one still see it
            self.xino.set_lower_names(self.uino, st.st_nlink - 1)
        elif self.plink and not stat_mod.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            pl = plink_path(self.uino)
            try:
                w.unlink(pl)
            except FileNotFoundError:
                pass
            w.link(self.tmp, w, pl)
            # the other lower names still point at the lower inode, and see the copy through
            # the pseudo-link until they are copied up themselves
            self.xino.set_lower_names(self.uino, st.st_nlink - 1)
            self.plinked = True
        pst = self.upper.lstat(self.dst_parent) if self.restore_parent_times else None
        w.rename(self.tmp, self.upper, self.dst_parent + (self.name,))
        self.committed = True
        if pst is not None:
            # the parent did not change through the union (aufs au_dtime_revert)
            try:
                self.upper.utime(self.dst_parent, (pst.st_atime_ns, pst.st_mtime_ns))
            except OSError:
                pass
        return tst  # the copy, as it was just before the rename (same inode)

    def release(self) -> None:
        try:
            self.unlock_source()
        finally:
            if self.src_fd >= 0:
                os.close(self.src_fd)
                self.src_fd = -1
            if self.tmp_made and not self.committed:
                try:
                    if self.st is not None and stat_mod.S_ISDIR(self.st.st_mode):
                        self.work.rmdir(self.tmp)
                    else:
                        self.work.unlink(self.tmp)
                except OSError:
                    pass


def link_up(
    *,
    work: Branch,
    upper: Branch,
    uino: int,
    dst_parent: Path,
    name: bytes,
    xino: Xino,
) -> os.stat_result:
    """Copy up one more name of a hard-linked file whose data is already up (the pseudo-link):
    link ``WORK/plink/UINO`` into place (aufs ``au_cpup_or_link`` / ``au_plink_lkup``)."""
    pl = plink_path(uino)
    tmp: Path = (TMP_DIR, f"ln.{uino}.{os.getpid()}.{next(_counter)}".encode())
    work.link(pl, work, tmp)
    try:
        pst = upper.lstat(dst_parent)
        work.rename(tmp, upper, dst_parent + (name,))
        if pst is not None:
            try:
                upper.utime(dst_parent, (pst.st_atime_ns, pst.st_mtime_ns))
            except OSError:
                pass
    except BaseException:
        try:
            work.unlink(tmp)
        except OSError:
            pass
        raise
    xino.set_lower_names(uino, xino.get_lower_names(uino) - 1)
    return upper.stat(dst_parent + (name,))


class CopyUpper:
    """Copy-up and pseudo-links of one union mount (aufs ``au_cpup_*`` and ``au_plink_*``).

    The pseudo-link ``WORK/plink/UINO`` is a hard link of the upper copy of a hard-linked lower
    file: the lower names not copied up yet read their data and attributes there, and
    ``xino.lower_names`` counts them (st_nlink = the pseudo-link's links less itself, plus
    those). A lower name that is hidden (unlink, renamed over) first gets the pseudo-link too,
    so the names left count one less. ``sbi`` is the mount's state (branches, work directory,
    xino, nodes, injection points, stats, and ``resolve``/``dir_modified``/``inval_attrs``): this
    class never sees the FUSE operations (:mod:`stackfs.union.fs`), as overlayfs' ``copy_up.c``
    reaches the rest only through ``overlayfs.h``.
    """

    def __init__(self, sbi: SbInfo) -> None:
        self.sbi = sbi
        #: union inode numbers that have a pseudo-link
        self.plinks: set[int] = set()
        self._locks: dict[int, trio.Lock] = {}
        #: copy-ups (shared) against renames (exclusive): the paths a copy-up uses stay put
        self.gate = RenameGate()
        if sbi.work is not None:
            for n in sbi.work.listdir((PLINK_DIR,)):
                if n.isdigit():
                    self.plinks.add(int(n))
        sbi.kernel.inject.declare(
            "copy_up",
            "in copy-up, after the lower file is taken (locked with copyup=aufs) and opened, "
            "before its data is copied",
        )

    # -- what the handlers ask -------------------------------------------------------------------

    def data_loc(self, node: Node) -> tuple[Branch, Path] | None:
        """The pseudo-link of ``node`` if its data is there (a lower name of a copied-up file)."""
        work = self.sbi.work
        if node.plink and node.top != 0 and work is not None:
            return work, plink_path(node.uino)
        return None

    def nlink(self, uino: int, st: os.stat_result) -> int:
        """st_nlink of a non-directory (``st`` is its top object or its pseudo-link)."""
        if uino in self.plinks:
            return max(st.st_nlink - 1, 0) + self.sbi.xino.get_lower_names(uino)
        return st.st_nlink

    def lower_name_gone(self, uino: int) -> None:
        """One lower name of pseudo-linked ``uino`` was hidden (synchronous: inside the
        handler's branch syscalls); drops the pseudo-link when no name is left."""
        xino = self.sbi.xino
        xino.set_lower_names(uino, xino.get_lower_names(uino) - 1)
        self.gc_plink(uino)

    def gc_plink(self, uino: int) -> None:
        """Drop the pseudo-link once no union name refers to the inode; else move its ctime
        (a name went, as unlink(2) says, whether or not a syscall touched the inode)."""
        work, xino = self.sbi.work, self.sbi.xino
        if uino not in self.plinks or work is None:
            return
        pl = plink_path(uino)
        st = work.lstat(pl)
        if st is None:
            self.plinks.discard(uino)
            return
        if st.st_nlink <= 1 and xino.get_lower_names(uino) <= 0:
            work.unlink(pl)
            self.plinks.discard(uino)
            xino.drop_override(st.st_ino)
            xino.set_lower_names(uino, 0)
        else:
            work.chmod(pl, stat_mod.S_IMODE(st.st_mode))  # a chmod to the same mode: ctime

    async def hide_lower_name(self, probe: Node, st: os.stat_result) -> bool:
        """A lower name of a hard-linked file is about to be hidden (whiteout, renamed over):
        give the inode its pseudo-link first, holding the data for the names left, which now
        count one less (aufs ``au_plink_append``). True if it was made now (the hidden name is
        not counted any more: no :meth:`lower_name_gone` for it)."""
        sbi = self.sbi
        if probe.top == 0 or stat_mod.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            return False
        if probe.uino in self.plinks or sbi.work is None:
            return False
        await self.copy_up_orphan(probe)
        node = sbi.nodes.get(probe.uino)
        if node is not None and node.top != 0:
            node.plink = True
        return True

    async def copy_up_dir(self, node: Node) -> None:
        """Give directory ``node`` an upper directory, parents first (aufs ``au_cpup_dirs``)."""
        sbi = self.sbi
        upper = sbi.need_upper()
        if node.parent is None:
            return
        await sbi.resolve(node)
        if node.layers[0] == 0:
            return
        async with self.gate.shared(), self._lock(node.uino):
            if node.layers[0] == 0:
                return
            await self.copy_up_dir(node.parent)
            job = self._job(node, upper, mode="plain", plink=False, hit=None)
            with calls("au_cpup_dirs", "au_cpup_single"):
                await in_worker(job.run)
            node.layers = (0, *node.layers)
            if len(node.layers) == 2:
                sbi.inval_attrs(node)  # a merged directory reports st_nlink 1 from now on
            sbi.stats["copy_up"] += 1
            sbi.dir_modified(node.parent)

    async def copy_up(self, node: Node) -> None:
        """Copy a non-directory up before it is modified (aufs ``au_sio_cpup_simple``)."""
        if node.is_dir:
            await self.copy_up_dir(node)
            return
        sbi = self.sbi
        upper = sbi.need_upper()
        if node.top == 0:
            return
        parent = node.parent
        assert parent is not None and sbi.work is not None
        lock = self._locks.get(node.uino)
        if (
            (lock is None or not lock.locked())
            and not node.unlinked
            and parent.resolved
            and parent.layers[0] == 0
            and node.uino not in self.plinks
        ):
            # the common case between plain directories: the whole copy-up runs here without
            # a checkpoint, so no other trio task can come between (no lock needed)
            fast = self._job(node, upper)
            if self._inline(fast):
                fast.hit = self._hit_inline
                with calls("au_sio_cpup_simple", "au_cpup_single"):
                    fast.run()
                self._copied_up(node, fast)
                return
        async with self.gate.shared(), self._lock(node.uino):
            if node.top == 0:
                return
            if node.unlinked:
                await self.copy_up_orphan(node)
                return
            await self.copy_up_dir(parent)
            job = None
            if node.uino in self.plinks:
                # another name of this inode is up already: link its pseudo-link into place
                await in_worker(
                    functools.partial(
                        link_up,
                        work=sbi.work,
                        upper=upper,
                        uino=node.uino,
                        dst_parent=parent.path(0),
                        name=node.name,
                        xino=sbi.xino,
                    )
                )
            else:
                job = self._job(node, upper)
                with calls("au_sio_cpup_simple", "au_cpup_single"):
                    if self._inline(job):
                        job.hit = self._hit_inline
                        job.run()
                    else:
                        await in_worker(job.run)
            self._copied_up(node, job)

    async def copy_up_orphan(self, node: Node) -> None:
        """Copy up an object whose name is gone (unlinked while open, or a lower name about to
        be hidden while other hard links remain): the copy goes to the pseudo-link only (aufs
        keeps such copies in ``.wh..wh.plnk``/``.wh..wh.orph``)."""
        sbi = self.sbi
        assert sbi.work is not None
        if node.uino in self.plinks:
            node.plink = True
            return
        job = CopyUp(
            src=sbi.branches[node.top],
            src_path=node.path(node.top),
            upper=sbi.work,
            dst_parent=(PLINK_DIR,),
            name=str(node.uino).encode(),
            work=sbi.work,
            xino=sbi.xino,
            uino=node.uino,
            mode=sbi.opts.copyup,
            hit=self._hit_from_thread,
            restore_parent_times=False,
        )
        job.orphan = True
        with calls("au_sio_cpup_simple", "au_cpup_single"):
            await in_worker(job.run)
        self.plinks.add(node.uino)
        node.plink = True
        sbi.stats["copy_up"] += 1

    # -- inside ----------------------------------------------------------------------------------

    def _lock(self, uino: int) -> trio.Lock:
        lock = self._locks.get(uino)
        if lock is None:
            lock = self._locks[uino] = trio.Lock()
        return lock

    def _job(self, node: Node, upper: Branch, **how: Any) -> CopyUp:
        """The copy-up of ``node`` into ``upper``; by default in the mount's copy-up order,
        with pseudo-links and the ``copy_up`` injection point (``how`` overrides)."""
        sbi = self.sbi
        assert node.parent is not None and sbi.work is not None
        how = {"mode": sbi.opts.copyup, "plink": True, "hit": self._hit_from_thread, **how}
        return CopyUp(
            src=sbi.branches[node.top],
            src_path=node.path(node.top),
            upper=upper,
            dst_parent=node.parent.path(0),
            name=node.name,
            work=sbi.work,
            xino=sbi.xino,
            uino=node.uino,
            **how,
        )

    def _copied_up(self, node: Node, job: CopyUp | None) -> None:
        if job is not None and job.plinked:
            self.plinks.add(node.uino)
        node.layers = (0,)
        node.plink = False
        self.sbi.stats["copy_up"] += 1
        assert node.parent is not None
        self.sbi.dir_modified(node.parent)

    def _inline(self, job: CopyUp) -> bool:
        """May ``job`` run in the trio thread? Only between plain directories (no FUSE branch
        that could block, no cross-layer lock), for a small file, with the ``copy_up``
        injection point off: a copy-up that can wait on another layer, or that a reproducer
        stops at its injection point, keeps its own worker thread."""
        if job.src.blocking or job.upper.blocking or job.work.blocking:
            return False
        if self.sbi.kernel.inject["copy_up"].action.kind != "off":
            return False
        st = job.src.lstat(job.src_path)
        if st is None or st.st_size > INLINE_MAX:
            return False
        job.st_hint = st
        return True

    def _hit_from_thread(self, point: str) -> None:
        inject = self.sbi.kernel.inject
        p = inject[point]
        if p.action.kind == "off":
            p.hits += 1  # what hit() does for a point that is off, without the trip to trio
            return
        trio.from_thread.run(inject.hit, point)

    def _hit_inline(self, point: str) -> None:
        self.sbi.kernel.inject[point].hits += 1  # only used while the point is off
