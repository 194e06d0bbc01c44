"""The GFS2 personality: one node of a cluster filesystem over a shared store (seed 004).

Two nodes are two mounts of the same store, each its own daemon, sharing one lock manager
(``stackfs dlmd``, ``-o dlm=SOCKET``, lockspace ``-o lockspace=NAME``, node ``-o node=NAME``).
Every inode has a glock (:mod:`backends.glock`) and I/O takes it as GFS2 does:

``gfs2_file_direct_write`` / ``gfs2_file_direct_read``
    DF (``LM_ST_DEFERRED``, DLM CW: compatible with DF on other nodes, not with SH or EX) on
    the target for the whole syscall. FUSE does not say when a syscall starts and
    ends, so its extent comes from the kernel: the request header's pid
    (:mod:`stackfs.runtime.fusereq`)
    names the task, ``/proc/TID/syscall`` its syscall (fd, buffer, count), ``/proc/TID/fdinfo``
    the file; the first chunk takes the glock, which is held until the chunks cover the count
    or ``/proc/TID/syscall`` shows the task has left that syscall (checked while someone
    waits). A direct write larger than one chunk (1 MiB) pins the caller's buffer chunk by
    chunk inside that one syscall (``fuse_direct_io`` -> ``iov_iter_extract_pages``), so a
    fault on the buffer arrives *between* the chunks, with the glock held: see
    docs/fuse-fault-path.md.
``gfs2_file_buffered_write``
    EX for the whole ``write(2)``; FUSE without a writeback cache writes through in 1 MiB
    WRITEs (``fuse_perform_write``), faulting the source's next part in between
    (``fault_in_iov_iter_readable``, ``generic_perform_write``'s shape), in the writer's own
    context: the same extent rule as a direct write.
``gfs2_file_read_iter`` (buffered, Linux 5.8 to 5.15: the glock around the page-cache read
    and its copy-out)
    SH for the whole ``read(2)``: from its first READ until ``/proc/TID/syscall`` shows the
    task left it (readahead READs do not add up to the count), the copy-out faulting the
    buffer's pages in between.
``gfs2_fault`` / ``gfs2_page_mkwrite``
    a FUSE READ from a task that is inside an I/O syscall on *another* file (or in no syscall)
    is the kernel paging in an mmap of this file. GFS2's ``->fault`` is ``gfs2_fault``, which
    takes this file's glock SH and then calls ``filemap_fault``; FUSE's is ``filemap_fault``
    itself, which locks the folio and sends the READ, so the model takes the glock in the
    READ (the folio is locked already: see ``GlockTable._local_ok``). A fault for write (the
    buffer of a read: the copy-out writes it) then takes EX in ``gfs2_page_mkwrite``; FUSE's
    ``page_mkwrite`` sends nothing, so that too is taken before the READ is answered
    (modelled: in the kernel it follows the read-in). Either is taken while the task's
    syscall holds its target's glock: the nesting of seed 004.
cached reads (a READ outside a tracked syscall)
    SH for the one READ request (EX for such a WRITE: writeback, a flush).

Variants (what the fault path does under the target's glock):

``buggy``
    2005 GFS/OCFS2, GFS2 before 5.16: take the glock in the fault. Two nodes, two files,
    opposite order: ABBA across the cluster.
``fixed-sorted``
    the 2005 proposal: at the first chunk walk the caller's mappings (``/proc/TID/maps``) over
    [buf, buf+count) and take every glock of *this* filesystem the buffer needs, with the
    target's, in glock order; a fault then finds its glock held by its own task. Mappings of
    another filesystem (another cluster) are not ours to lock: no help there.
``fixed-prefault``
    GFS1: fault the buffer in (read ``/proc/TID/mem`` from a worker) before taking the glock.
    Leaves a window: a demote of the prefaulted file's glock (another node's EX) drops the
    pages again before the copy.
``fixed-nofault``
    GFS2, Linux 5.16 (c03098d4b9ad, b01b2d72da25): the copy runs with page faults disabled;
    on a short copy the holder allows demotion (``gfs2_holder_allow_demote``), faults in
    outside the glock and retries. Here a chunk's copy (its pages are pinned before the WRITE
    is sent: no fault can happen in it) runs with the holders firm; between chunks, where the
    kernel faults the next part of the buffer in (through this filesystem or another one),
    the syscall's holders are HIF_MAY_DEMOTE, and so are they during a page-in this daemon
    serves for the same task; a glock demoted meanwhile is taken again at the next chunk
    (counted as ``retry``).

Forced mode (``-o rendezvous=K``): at the first chunk of a write the node meets the other
writers at the lock manager: once all K are in their syscalls (their first chunks faulted in),
the k-th writer takes its glock only once k-1 writers hold theirs, and each waits (at most
``rendezvous_wait`` seconds) until all K hold theirs before copying on. That opens the seed's
window on the first try; a fixed variant must still complete through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from pyfuse3 import FileHandleT

from backends.base import Handle, Option, StoreFS, fuse_op
from backends.glock import DLMClient, Glock, GlockTable, Holder
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, get_current_task
from stackfs.linux import proc
from stackfs.runtime import fusereq, mountinfo
from stackfs.runtime.daemon import in_worker

#: x86-64 syscall numbers of the I/O syscalls whose buffer the glock's extent follows
READ_SYSCALLS = {0: "read", 17: "pread64"}
#: the glock state a syscall holds its target in: (writes, direct) -> state
IO_STATE = {(True, True): "DF", (False, True): "DF", (True, False): "EX", (False, False): "SH"}
WRITE_SYSCALLS = {1: "write", 18: "pwrite64"}
IO_SYSCALLS = {**READ_SYSCALLS, **WRITE_SYSCALLS}
PREFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class Syscall:
    """What ``/proc/TID/syscall`` says a task is doing: number, fd, buffer, count."""

    nr: int
    fd: int
    buf: int
    count: int

    @property
    def name(self) -> str:
        return IO_SYSCALLS.get(self.nr, str(self.nr))

    @property
    def writes(self) -> bool:
        return self.nr in WRITE_SYSCALLS


def current_syscall(tid: int, *, sync: bool = False) -> Syscall | None:
    """The I/O syscall task ``tid`` is blocked in (None: another one, none, or running).
    ``sync``: ``tid`` sent a synchronous request (a direct-I/O READ or WRITE) and is on its way
    to sleep for the answer: wait for it (:func:`stackfs.linux.proc.settled_syscall_text`)."""
    text = proc.settled_syscall_text(tid) if sync else proc.syscall_text(tid)
    return current_syscall_of(text)


def left_syscall(tid: int, sc: Syscall) -> bool:
    """Has task ``tid`` left syscall ``sc``? (Gone, in no syscall, or in another one; a task
    that is running right now shows ``running`` and tells nothing.)"""
    text = proc.syscall_text(tid)
    if not text:
        return True
    if text.startswith("running"):
        return False
    return current_syscall_of(text) != sc


def current_syscall_of(text: str) -> Syscall | None:
    parsed = proc.parse_syscall(text)
    if parsed is None or parsed[0] not in IO_SYSCALLS:
        return None
    nr, args = parsed
    return Syscall(nr, args[0], args[1], args[2])


def prefault_owner(tid: int, sc: Syscall | None) -> int | None:
    """The task whose memory task ``tid``, in syscall ``sc``, is reading (``read`` of
    ``/proc/PID/mem``: ``access_remote_vm``, fixed-prefault's prefault), else None."""
    if sc is None or sc.writes:
        return None
    try:
        target = os.readlink(f"/proc/{tid}/fd/{sc.fd}")
    except OSError:
        return None
    parts = target.split("/")
    if len(parts) == 4 and parts[1] == "proc" and parts[3] == "mem" and parts[2].isdigit():
        return int(parts[2])
    return None


def fault_of(tid: int) -> tuple[str, bool]:
    """What a page-in READ from task ``tid`` is, from one reading of ``/proc/TID/syscall``:
    ``prefault`` (a task reading another's memory: :func:`prefault_owner`, whichever
    filesystem serves the page) or ``fault`` (the mapping's owner, its readahead included);
    and whether the fault is for write: the syscall whose buffer it is (the prefaulted task's,
    for a prefault) is a read, whose copy-out writes it. A task that runs on sent an async
    readahead, no fault of its own: not for write."""
    sc = current_syscall(tid)
    owner = prefault_owner(tid, sc)
    if owner is not None:
        sc = current_syscall(owner)
    return ("fault" if owner is None else "prefault"), sc is not None and not sc.writes


def fd_file(tid: int, fd: int) -> tuple[int, int] | None:
    """(mnt_id, ino) of ``fd`` of task ``tid`` from ``/proc/TID/fdinfo/FD`` (never a stat:
    that would send this daemon a GETATTR from its own loop)."""
    text = (proc.read(f"/proc/{tid}/fdinfo/{fd}", 4096) or b"").decode(errors="replace")
    mnt = ino = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key == "mnt_id":
            mnt = int(val)
        elif key == "ino":
            ino = int(val)
    return (mnt, ino) if mnt is not None and ino is not None else None


def buffer_files(tid: int, start: int, end: int, conn: int) -> list[int]:
    """Inode numbers of the files of FUSE connection ``conn`` that task ``tid`` has mapped over
    [start, end) (``/proc/TID/maps``: the 2005 vma walk)."""
    out: list[int] = []
    text = (proc.read(f"/proc/{tid}/maps", 1 << 20) or b"").decode(errors="replace")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        lo, _, hi = fields[0].partition("-")
        if int(hi, 16) <= start or int(lo, 16) >= end:
            continue
        major, _, minor = fields[3].partition(":")
        if int(major, 16) == 0 and int(minor, 16) == conn and int(fields[4]) not in out:
            out.append(int(fields[4]))
    return out


@dataclass(eq=False)
class SyscallHold:
    """The glocks one task's I/O syscall holds (the extent of ``gfs2_file_*_iter``)."""

    tid: int
    syscall: Syscall
    target: int
    holders: list[tuple[Glock, Holder]] = field(default_factory=list)
    covered: int = 0
    retries: int = 0
    #: the requests add up to the count (not a buffered read's: readahead)
    covers: bool = True

    def to_json(self) -> dict[str, Any]:
        sc = self.syscall
        return {
            "tid": self.tid,
            "syscall": f"{sc.name}(fd {sc.fd}, 0x{sc.buf:x}, {sc.count})",
            "target": self.target,
            "covered": self.covered,
            "retries": self.retries,
            "glocks": [gl.name for gl, _h in self.holders],
        }


class Gfs2KernelState(KernelState):
    """The daemon's kernel state, with the glocks in the ``locks`` list."""

    glocks: GlockTable | None = None
    scope = ""
    node = ""

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        snap = super().snapshot(now)
        if self.glocks is not None:
            snap["locks"] = list(snap["locks"]) + self.glocks.snapshot(self.scope, self.node)
        return snap


class Gfs2FS(StoreFS):
    """One GFS2 node (see the module docstring)."""

    kind = "gfs2"
    variants = {
        "buggy": "2005 GFS2/OCFS2: the page fault takes the glock inside the I/O's glock",
        "fixed-sorted": "walk /proc/PID/maps, take every needed glock in sorted order first",
        "fixed-prefault": "GFS1: fault the buffer in before taking the glock",
        "fixed-nofault": "GFS2 5.16: copy without faults, allow demote, fault in, retry",
    }
    injection_points = {
        "gfs2_glock_nq": "before a syscall's holder asks for a glock (gfs2_file_write_iter, "
        "gfs2_file_read_iter; for fixed-prefault: after the prefault, before the glock)",
        "gfs2_fault": "before a page-in asks for its file's glock SH (gfs2_fault, before "
        "filemap_fault; a prefault's too), when it holds other glocks or its glock is not "
        "cached in a state it may take",
        "gfs2_page_mkwrite": "before a fault for write asks for its file's glock EX, after "
        "the page-in (the copy-out of a read into a shared mapping), when the glock is not "
        "cached EX",
        "do_xmote": "a demote: after the page-cache invalidation (inode_go_inval), before "
        "the lock manager is asked to convert down",
    }
    extra_options = (
        Option(
            "dlm",
            str,
            "",
            "the lock manager's socket (RUN_DIR/PID/dlm.sock of stackfs dlmd); required",
        ),
        Option(
            "lockspace",
            str,
            "gfs2",
            "the cluster filesystem's lockspace (same on every node of one filesystem)",
        ),
        Option("node", str, "", "this node's name in the cluster (default: node-PID)"),
        Option(
            "rendezvous",
            int,
            0,
            "forced mode: meet this many writers at the lock "
            "manager around the first chunk's glock (0: off)",
        ),
        Option("rendezvous_wait", float, 1.0, "forced mode: seconds to wait for the others"),
    )
    fuse_options_extra = ("debug",)  # the request header's pid (stackfs.runtime.fusereq)

    def __init__(self, store, variant=None, options=None, kernel=None) -> None:
        super().__init__(store, variant, options, kernel or Gfs2KernelState())
        if not self.opts["dlm"]:
            raise ValueError("gfs2 needs -o dlm=SOCKET (the dlm.sock of a running stackfs dlmd)")
        if not fusereq.install():
            raise ValueError("gfs2 needs libfuse >= 3.7 (fuse_set_log_func)")
        self.node = self.opts["node"] or f"node-{os.getpid()}"
        self.lockspace = self.opts["lockspace"]
        self.holds: dict[int, SyscallHold] = {}
        self.conn = 0
        self.dlm: DLMClient | None = None
        self.glocks: GlockTable | None = None

    # -- start: join the cluster -------------------------------------------------------------

    async def started(self, nursery: trio.Nursery) -> None:
        mp = None
        for e in mountinfo.mounts():
            if e.daemon_pid == os.getpid():
                mp, self.conn = e.mountpoint, e.conn
        self.dlm = DLMClient(self.opts["dlm"], self.node, self.lockspace, os.getpid(), mp)
        try:
            await self.dlm.connect(nursery)
        except OSError as exc:
            raise SystemExit(
                f"stackfs gfs2: no lock manager at {self.opts['dlm']}: {exc.strerror or exc}"
            ) from None
        self.glocks = GlockTable(self.dlm, self._inode_go_inval, self._reap, self.kernel.inject.hit)
        state = self.kernel
        if isinstance(state, Gfs2KernelState):
            state.glocks, state.scope, state.node = self.glocks, f"dlm:{self.lockspace}", self.node

    async def _inode_go_inval(self, ino: int) -> None:
        inode = self.inodes.get(ino)
        if inode is not None:
            await self.invalidate_pages(inode)

    def _glock(self, ino: int) -> Glock:
        assert self.glocks is not None
        inode = self.inodes.get(ino)
        if inode is None:
            return self.glocks.get(ino)
        # the store's inode number names the glock on every node (inode.key: st_dev, st_ino)
        return self.glocks.get(ino, self.path_of(inode), number=inode.key[1])

    def _ident(self, gl: Glock) -> str:
        return f"glock {self.lockspace}:{gl.name}"

    # -- holders -----------------------------------------------------------------------------

    async def _nq(
        self,
        gl: Glock,
        h: Holder,
        *,
        may_demote_outer: bool = False,
        point: str | None = "gfs2_glock_nq",
        lockdep: bool = True,
    ) -> Holder:
        """``gfs2_glock_nq`` with lockdep's view: a glock taken while the task's other glocks
        may be demoted under it (HIF_MAY_DEMOTE) adds no dependency on them. ``point``: the
        injection point hit first (None: none). ``lockdep``: False for a hold the task is not
        inside (an async readahead's page-in: its ``gfs2_fault`` has returned)."""
        assert self.glocks is not None
        if point is not None:
            await self.kernel.inject.hit(point)
        if lockdep:
            self.kernel.lockdep.lock_acquire(
                h.task, self._ident(gl), h.mode, h.chain, trylock=may_demote_outer
            )
        try:
            return await self.glocks.nq(gl, h)
        except BaseException:
            self.kernel.lockdep.lock_release(h.task, self._ident(gl))
            raise

    def _dq(self, gl: Glock, h: Holder) -> None:
        assert self.glocks is not None
        self.glocks.dq(gl, h)
        self.kernel.lockdep.lock_release(h.task, self._ident(gl))

    def _release(self, hold: SyscallHold) -> None:
        for gl, h in hold.holders:
            self._dq(gl, h)
        hold.holders.clear()
        if self.holds.get(hold.tid) is hold:
            del self.holds[hold.tid]

    def _reap(self, gl: Glock) -> None:
        """Drop the holds of tasks that have left the syscall they were taken for."""
        for hold in list(self.holds.values()):
            if any(g is gl for g, _h in hold.holders) and left_syscall(hold.tid, hold.syscall):
                self._release(hold)

    def _syscall_of(self, tid: int, handle: Handle) -> Syscall | None:
        """The I/O syscall of ``tid`` on ``handle``'s file, if that is what it is in."""
        sc = current_syscall(tid, sync=handle.direct_io)
        if sc is None:
            return None
        f = fd_file(tid, sc.fd)
        return sc if f is not None and f[1] == handle.inode.ino else None

    async def _hold(
        self, tid: int, handle: Handle, sc: Syscall, func: str, *, covers: bool = True
    ) -> SyscallHold:
        """The glocks of ``tid``'s syscall ``sc``: taken at its first chunk, re-taken after a
        demote (fixed-nofault), reused for every later chunk. ``covers``: the requests add up
        to the syscall's count (its WRITEs, a direct read's READs), so the hold ends there."""
        hold = self.holds.get(tid)
        if hold is not None and (hold.syscall != sc or hold.target != handle.inode.ino):
            self._release(hold)  # the task has left that syscall (a short one)
            hold = None
        task = get_current_task()
        if hold is not None:
            for i, (gl, h) in enumerate(hold.holders):
                if h.demoted or not h.granted:  # demoted under HIF_MAY_DEMOTE: retry
                    hold.retries += 1
                    self.count("retry")
                    again = Holder(task, h.mode, (func, "gfs2_glock_nq"), "syscall")
                    again.folios_locked = h.folios_locked
                    hold.holders[i] = (gl, await self._nq(gl, again))
            return hold
        hold = self.holds[tid] = SyscallHold(tid, sc, handle.inode.ino, covers=covers)
        mode = IO_STATE[(sc.writes, handle.direct_io)]
        forced = self.opts["rendezvous"] and self.dlm is not None
        if forced:
            await self._rendezvous("enter", tid, func)
        want = [(handle.inode.ino, mode)]
        if self.variant == "fixed-prefault":
            await self._prefault(tid, sc)
        elif self.variant == "fixed-sorted":
            others = buffer_files(tid, sc.buf, sc.buf + sc.count, self.conn)
            # a read writes its buffer (gfs2_page_mkwrite: EX), a write reads it (gfs2_fault)
            want += [
                (ino, "EX" if not sc.writes else "SH")
                for ino in others
                if ino != handle.inode.ino and ino in self.inodes
            ]
            want.sort(key=lambda w: self._glock(w[0]).number)  # glock order: cluster-wide
            self.count("sorted_walk")
        try:
            for ino, m in want:
                gl = self._glock(ino)
                chain = (
                    (func, "gfs2_glock_nq")
                    if ino == hold.target
                    else (func, "walk_vm", "gfs2_glock_nq")
                )
                h = Holder(task, m, chain, "syscall", folios_locked=not handle.direct_io)
                hold.holders.append((gl, await self._nq(gl, h)))
        except BaseException:
            self._release(hold)
            raise
        if forced:
            await self._rendezvous("held", tid, func)
        return hold

    async def _rendezvous(self, step: str, tid: int, func: str) -> None:
        assert self.dlm is not None
        passed = await self.dlm.rendezvous(
            func,
            step,
            int(self.opts["rendezvous"]),
            float(self.opts["rendezvous_wait"]),
            tid,
        )
        self.count(f"rendezvous_{step}" + ("" if passed else "_timeout"))

    async def _prefault(self, tid: int, sc: Syscall) -> None:
        """GFS1: touch every page of the caller's buffer before taking the glock (the reads of
        ``/proc/TID/mem`` fault them in, through this mount, from a worker thread)."""

        def touch() -> None:
            for off in range(0, sc.count, PREFAULT_CHUNK):
                proc.read_mem(tid, sc.buf + off, min(PREFAULT_CHUNK, sc.count - off))

        await in_worker(touch)
        self.count("prefault")

    def _between_chunks(self, hold: SyscallHold, allow: bool) -> None:
        """fixed-nofault: a chunk's copy runs under the glock with its pages pinned already (no
        fault possible: ``pagefault_disable``); between chunks the kernel pins the next part
        of the buffer, faulting it in, possibly through another filesystem: that is 5.16's
        "allow demote, fault in" step, so the holders may be demoted there
        (``gfs2_holder_allow_demote``) and are taken again at the next chunk."""
        if self.variant != "fixed-nofault" or self.glocks is None or not hold.holders:
            return
        for gl, h in hold.holders:
            if h.granted:
                self.glocks.allow_demote(gl, h, allow)

    def _progress(self, hold: SyscallHold, size: int) -> None:
        hold.covered += size
        if hold.covers and hold.covered >= hold.syscall.count:
            self._release(hold)

    # -- I/O ---------------------------------------------------------------------------------

    def _task_tid(self) -> int:
        hdr = fusereq.current()
        return hdr.pid if hdr is not None else 0

    @fuse_op
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        tid = self._task_tid()  # first, before anything yields (stackfs.runtime.fusereq)
        handle = self.handle(fh)
        sc = self._syscall_of(tid, handle) if tid else None
        if sc is None or not sc.writes:
            return await self._io_one(
                handle, "EX", "gfs2_file_write_iter", lambda: self._pwrite(handle, off, buf)
            )
        func = "gfs2_file_direct_write" if handle.direct_io else "gfs2_file_buffered_write"
        hold = await self._hold(tid, handle, sc, func)
        self._between_chunks(hold, False)
        try:
            return self._pwrite(handle, off, buf)
        finally:
            self._progress(hold, len(buf))
            self._between_chunks(hold, True)

    @fuse_op
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        tid = self._task_tid()
        handle = self.handle(fh)
        hold = self.holds.get(tid) if tid else None
        if hold is not None and hold.target == handle.inode.ino and not hold.syscall.writes:
            # a later READ of a read syscall's own file: readahead may come while the task
            # runs on (``/proc/TID/syscall`` says ``running``)
            sc: Syscall | None = hold.syscall
        else:
            sc = current_syscall(tid, sync=handle.direct_io) if tid else None
        mine = (
            sc is not None and (f := fd_file(tid, sc.fd)) is not None and f[1] == handle.inode.ino
        )
        if mine and sc is not None and not sc.writes:
            func = "gfs2_file_direct_read" if handle.direct_io else "gfs2_file_read_iter"
            hold = await self._hold(tid, handle, sc, func, covers=handle.direct_io)
            self._between_chunks(hold, False)
            try:
                return os.pread(handle.fd, size, off)
            finally:
                self._progress(hold, size)
                self._between_chunks(hold, True)
        if mine:
            return await self._io_one(
                handle, "SH", "gfs2_file_read_iter", lambda: os.pread(handle.fd, size, off)
            )
        return await self._fault(tid, handle, off, size)

    def _pwrite(self, handle: Handle, off: int, buf: bytes) -> int:
        self.check_handle(handle, "write")
        view = memoryview(buf)
        done = 0
        while done < len(view):
            done += os.pwrite(handle.fd, view[done:], off + done)
        self.wrote(handle, off, done)
        return done

    async def _io_one(self, handle: Handle, mode: str, func: str, io: Callable[[], Any]) -> Any:
        """A request that is not part of a tracked syscall: the glock for this request."""
        gl = self._glock(handle.inode.ino)
        h = await self._nq(gl, Holder(get_current_task(), mode, (func, "gfs2_glock_nq"), "read"))
        try:
            return io()
        finally:
            self._dq(gl, h)

    async def _fault(self, tid: int, handle: Handle, off: int, size: int) -> bytes:
        """``gfs2_fault`` (and ``gfs2_page_mkwrite`` for a fault for write): a page-in of a
        mapping of this file by a task that may hold other glocks for its syscall (on this
        node, or on another filesystem's)."""
        gl = self._glock(handle.inode.ino)
        task = get_current_task() if tid else Task(0, "?")
        hold = self.holds.get(tid)
        self.count("gfs2_fault")
        if hold is not None and any(g is gl and h.granted for g, h in hold.holders):
            self.count("fault_under_own_glock")  # fixed-sorted: taken before, in order
            return os.pread(handle.fd, size, off)
        nested = list(hold.holders) if hold is not None else []
        allow = self.variant == "fixed-nofault" and bool(nested)
        if nested:
            self.count("fault_under_glock")
        if allow:
            assert self.glocks is not None
            for g, h in nested:
                self.glocks.allow_demote(g, h, True)  # gfs2_holder_allow_demote
        kind, for_write = fault_of(tid) if tid else ("fault", False)
        try:
            h = await self._fault_nq(gl, Holder(task, "SH", ("gfs2_fault",), kind), nested, allow)
            try:
                data = os.pread(handle.fd, size, off)
            finally:
                self._dq(gl, h)
            if for_write:
                self.count("gfs2_page_mkwrite")
                mk = Holder(task, "EX", ("gfs2_page_mkwrite",), kind)
                self._dq(gl, await self._fault_nq(gl, mk, nested, allow))
            return data
        finally:
            if allow:
                assert self.glocks is not None
                for g, h in nested:
                    self.glocks.allow_demote(g, h, False)  # gfs2_holder_disallow_demote

    async def _fault_nq(
        self, gl: Glock, holder: Holder, nested: list[tuple[Glock, Holder]], allow: bool
    ) -> Holder:
        """A page-in's ``gfs2_glock_nq`` (``holder.chain``: the function that takes it)."""
        assert self.glocks is not None
        holder.chain = (*holder.chain, "gfs2_glock_nq")
        # a page-in that holds nothing else and finds its glock cached in a state it may
        # take orders nothing across the cluster: not a scheduled decision. Nor does
        # gfs2_page_mkwrite on a glock cached EX, even nested: it follows its page-in's
        # gfs2_fault (a decision already), is granted here whatever the other nodes do, and
        # a decision for each made fixed-nofault's read case pass the 200 a run may take
        decides = nested and holder.chain[0] != "gfs2_page_mkwrite"
        point = holder.chain[0] if decides or not self.glocks.may_grant(gl, holder) else None
        # lockdep follows the task only while it sleeps in the fault: an async readahead's
        # READ is served while its task runs on (to its next WRITE, say), outside gfs2_fault
        inside = holder.task.pid > 0 and "filemap_fault" in proc.kernel_stack(holder.task.pid)
        return await self._nq(gl, holder, may_demote_outer=allow, point=point, lockdep=inside)

    # -- state -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["gfs2"] = {
            "node": self.node,
            "lockspace": self.lockspace,
            "dlm": self.opts["dlm"],
            "dlm_pid": self.dlm.dlm_pid if self.dlm else None,
            "dlm_connected": bool(self.dlm and not self.dlm.gone),
            "holds": [h.to_json() for h in self.holds.values()],
            "glock_stats": dict(self.glocks.stats) if self.glocks else {},
        }
        return out
