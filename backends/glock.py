"""GFS2's glocks on one node, and the node's connection to the lock manager (modelled).

Mirrors fs/gfs2/glock.c: a :class:`Glock` is the node's cached state of one DLM lock resource
(``2/<ino hex>``, an inode glock). Tasks queue :class:`Holder` s on it (``gfs2_glock_nq``) and
drop them (``gfs2_glock_dq``); when the node's cached mode is too weak, ``do_xmote`` asks the
DLM (:mod:`backends.dlmd`) to convert. The glock stays cached in its mode after the last holder
goes. A blocking AST from the DLM (another node wants the lock) marks the glock for demotion;
the demote (``run_queue`` -> ``do_xmote`` down) happens once no holder blocks it: holders are
granted holders, except those that allowed demotion (``gfs2_holder_allow_demote``,
``HIF_MAY_DEMOTE``, Linux 5.16). Before converting down the node writes back and drops its
cached pages (``inode_go_sync`` / ``inode_go_inval``): here a real
``pyfuse3.invalidate_inode`` of the kernel's page cache, run off the trio thread.

Modes are GFS2's lock states (``LM_ST_*``: UN, SH, DF, EX), held on the DLM in the modes
``lock_dlm.c: make_mode`` gives them (NL, PR, CW, EX): DF ("deferred", direct I/O) is
compatible with DF on another node, not with SH or EX. A holder is granted on this node as
``glock.c: may_grant`` says: next to granted holders only in the same state (SH with SH, DF
with DF; EX alone), else when the cached state is its own or EX (which covers SH and DF). A
blocking AST for a DLM mode asks for the state ``gdlm_bast`` maps it to (EX -> UN, CW -> DF,
PR -> SH); a demote waits for every holder that has not allowed it (``find_first_strong_holder``)
and one to SH from DF, which is a conversion *up* on the DLM, is a try (``do_xmote`` adds
``LM_FLAG_TRY_1CB``): when the DLM cannot grant it at once the node unlocks instead
(``finish_xmote``).

Every holder and waiter has a task, mode and call chain (GFS2 function names); the table's
snapshot is part of the daemon's ``locks`` state with ``"scope": "dlm:<lockspace>"``, which is
what lets the watchdog see one lock shared by the daemons of two nodes.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from stackfs.kernel.dlm import compatible
from stackfs.kernel.task import Task

log = logging.getLogger(__name__)

#: ``lock_dlm.c: make_mode``: the DLM mode each state is held in
_DLM_MODE = {"UN": "NL", "SH": "PR", "DF": "CW", "EX": "EX"}
#: ``lock_dlm.c: gdlm_bast``: the state a blocking AST for a DLM mode asks this node to go to
_BAST_STATE = {"EX": "UN", "CW": "DF", "PR": "SH"}


def dlm_mode(state: str | None) -> str:
    """``make_mode``: the DLM mode of a GFS2 lock state (None: UN, NL)."""
    return _DLM_MODE[state or "UN"]


def lm_state(mode: str) -> str | None:
    """The GFS2 state a DLM mode granted to this node stands for (NL: None, unlocked)."""
    for state, m in _DLM_MODE.items():
        if m == mode:
            return None if state == "UN" else state
    raise ValueError(f"no GFS2 lock state is held in DLM mode {mode!r}")


def bast_state(mode: str) -> str | None:
    """``gdlm_bast``: the state a blocking AST for DLM ``mode`` asks for (None: UN)."""
    state = _BAST_STATE.get(mode, "UN")
    return None if state == "UN" else state


def may_grant(state: str | None, current: str | None, wanted: str) -> bool:
    """``glock.c: may_grant``: may a holder of ``wanted`` be granted on a glock cached in
    ``state`` whose granted holders are in ``current`` (None: no holder)?"""
    if current is not None:
        return current in ("SH", "DF") and wanted == current
    if state == wanted:
        return True
    return state == "EX" and wanted in ("SH", "DF")


class DLMGone(OSError):
    """The connection to the lock manager is gone (EIO to the caller)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class DLMClient:
    """This node's connection to ``stackfs dlmd`` (one per node and lockspace)."""

    def __init__(
        self, path: str, node: str, lockspace: str, pid: int, mountpoint: str | None
    ) -> None:
        self.path, self.node, self.lockspace = path, node, lockspace
        self.pid, self.mountpoint = pid, mountpoint
        self.stream: trio.SocketStream | None = None
        self._rid = itertools.count(1).__next__
        self._pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._send = trio.Lock()
        self.on_bast: Callable[[str, str], Awaitable[None]] | None = None
        self.dlm_pid: int | None = None
        self.gone = False

    async def connect(self, nursery: trio.Nursery) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(self.path)
        self.stream = trio.SocketStream(sock)
        await self._write(
            {
                "op": "join",
                "node": self.node,
                "lockspace": self.lockspace,
                "pid": self.pid,
                "mountpoint": self.mountpoint,
            }
        )
        nursery.start_soon(self._reader, nursery)

    async def _write(self, msg: dict[str, Any]) -> None:
        if self.stream is None or self.gone:
            raise DLMGone(f"no lock manager at {self.path}")
        async with self._send:
            try:
                await self.stream.send_all(json.dumps(msg).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.gone = True
                raise DLMGone(str(exc)) from exc

    async def _reader(self, nursery: trio.Nursery) -> None:
        assert self.stream is not None
        buf = b""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    op = msg.get("op")
                    if op == "joined":
                        self.dlm_pid = msg.get("pid")
                    elif op == "bast" and self.on_bast is not None:
                        nursery.start_soon(self.on_bast, msg["res"], msg["mode"])
                    elif msg.get("rid") in self._pending:
                        ev, box = self._pending.pop(msg["rid"])
                        box.append(msg)
                        ev.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.gone = True
            for ev, _box in self._pending.values():
                ev.set()
            self._pending.clear()

    async def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = self._rid()
        ev: trio.Event = trio.Event()
        box: list[dict[str, Any]] = []
        self._pending[rid] = (ev, box)
        try:
            await self._write({**msg, "rid": rid})
            await ev.wait()
        finally:
            self._pending.pop(rid, None)
        if not box:
            raise DLMGone("the lock manager went away")
        return box[0]

    async def lock(
        self, res: str, mode: str, waiter: Holder | None = None, *, try_: bool = False
    ) -> str:
        """``dlm_lock`` (convert) to DLM ``mode``: returns the mode granted, once granted.
        ``waiter``: the holder that asked (its task and kind go along: forced mode's
        rendezvous needs to know; a DLM does not). ``try_``: ``DLM_LKF_NOQUEUE`` (GFS2's
        ``LM_FLAG_TRY_1CB``): not grantable at once, the node keeps the mode it had."""
        msg: dict[str, Any] = {"op": "lock", "res": res, "mode": mode}
        if waiter is not None:
            msg["waiters"] = [[waiter.task.pid, waiter.kind]]
        if try_:
            msg["try"] = True
        return str((await self._call(msg))["mode"])

    async def waiting(self, res: str, h: Holder) -> None:
        """Another holder (task, kind) now waits for this node's pending request on ``res``."""
        await self._write({"op": "waiting", "res": res, "waiters": [[h.task.pid, h.kind]]})

    async def blocked(self, res: str, tids: list[int]) -> None:
        """Tell the lock manager that a demote of ``res`` waits for these tasks' holders
        (what forced mode's rendezvous needs to know; a real DLM does not care)."""
        await self._write({"op": "blocked", "res": res, "tids": tids})

    async def unlock(self, res: str) -> None:
        await self._write({"op": "unlock", "res": res})

    async def rendezvous(self, name: str, step: str, parties: int, wait: float, tid: int) -> bool:
        reply = await self._call(
            {
                "op": "rendezvous",
                "name": name,
                "step": step,
                "parties": parties,
                "wait": wait,
                "tid": tid,
            }
        )
        return bool(reply.get("passed"))


@dataclass(eq=False)
class Holder:
    """``struct gfs2_holder``: a task's hold (or wait) on a glock."""

    task: Task
    #: the GFS2 lock state it holds or wants: SH, DF or EX
    mode: str
    chain: tuple[str, ...]
    #: "syscall" (held for a read/write syscall), "fault" (a page-in, or ``gfs2_page_mkwrite``
    #: after it), "prefault" (a page-in by the daemon's own prefault, fixed-prefault), "read"
    #: (one request)
    kind: str
    since: float = field(default_factory=time.time)
    #: HIF_MAY_DEMOTE: the glock may be demoted under this holder (it faults outside it)
    may_demote: bool = False
    #: the glock was demoted under this holder: it must be re-acquired before use
    demoted: bool = False
    granted: bool = False
    #: asked for in a FUSE request that holds page-cache folios locked (a buffered READ or
    #: WRITE: ``fuse_perform_write`` sends its WRITE with them locked), as a page-in does
    folios_locked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.to_json(),
            "mode": self.mode,
            "since": self.since,
            "chain": list(self.chain),
            "kind": self.kind,
            "may_demote": self.may_demote,
        }


@dataclass(eq=False)
class Glock:
    """``struct gfs2_glock`` of one inode on this node."""

    #: the node's FUSE inode (what page-cache invalidation names)
    ino: int
    desc: str
    #: the glock number, the same on every node (GFS2: the inode's disk address; here the
    #: store's inode number): the DLM resource is named after it, never after ``ino``, which
    #: each node allocates in its own lookup order where the store's numbers cannot be used
    number: int = -1
    #: the GFS2 state the DLM granted this node: SH, DF, EX (None: LM_ST_UNLOCKED)
    state: str | None = None
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Holder] = field(default_factory=list)
    #: GLF_DEMOTE: the state to go to (``gl_demote_state``; "UN": unlock) since a blocking AST
    #: came for the DLM mode ``wanted``
    demote: str | None = None
    wanted: str | None = None
    demote_since: float | None = None
    xmote: bool = False
    changed: trio.Event = field(default_factory=trio.Event)
    demotes: int = 0

    @property
    def name(self) -> str:
        return f"2/{self.number if self.number >= 0 else self.ino:x}"

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def demote_state(self) -> str | None:
        """The state a pending demote goes to (None: unlocked)."""
        return None if self.demote in (None, "UN") else self.demote

    def blocking_demote(self) -> list[Holder]:
        """``find_first_strong_holder``: every granted holder that has not allowed demotion
        holds a pending demote up."""
        if self.demote is None:
            return []
        return [h for h in self.holders if not h.may_demote]


class GlockTable:
    """The node's glocks; ``gfs2_glock_nq`` / ``gfs2_glock_dq`` and the demote work."""

    def __init__(
        self,
        dlm: DLMClient,
        invalidate: Callable[[int], Awaitable[None]],
        reap: Callable[[Glock], None],
        hit: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.dlm = dlm
        #: the node's injection points (``do_xmote``: a demote, after its invalidation)
        self._hit = hit
        self.glocks: dict[int, Glock] = {}
        self._invalidate = invalidate
        #: drops holders whose task has left its syscall (called while someone waits)
        self._reap = reap
        self.stats: dict[str, int] = {}
        dlm.on_bast = self._bast

    def get(self, ino: int, desc: str = "", number: int = -1) -> Glock:
        gl = self.glocks.get(ino)
        if gl is None:
            gl = self.glocks[ino] = Glock(ino, desc, number)
        elif desc and not gl.desc:
            gl.desc = desc
        return gl

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def may_grant(self, gl: Glock, h: Holder) -> bool:
        """May ``h`` be granted on this node now, without the lock manager?"""
        return self._local_ok(gl, h)

    def _local_ok(self, gl: Glock, h: Holder) -> bool:
        """May ``h`` be granted on this node now (``may_grant``)? A task's own holders do
        not stand in its way (the model lets a task nest holders of one glock)."""
        if gl.state is None:
            return False
        if (
            gl.demote is not None
            and h.kind == "syscall"
            and not h.folios_locked
            and not may_grant(gl.demote_state, None, h.mode)
        ):
            # a demote is pending: new syscalls queue behind it. A page-in does not, nor a
            # buffered READ or WRITE: their folios are locked already (FUSE sends READ from
            # inside filemap_fault and readahead, a buffered WRITE with its folios locked), and
            # the demote's invalidation would wait for them (a testbed artifact: GFS2 takes
            # the glock before it locks any folio)
            return False
        return may_grant(gl.state, self._current(gl, h), h.mode)

    @staticmethod
    def _current(gl: Glock, h: Holder) -> str | None:
        """The state of the glock's granted holders other than ``h``'s task's (None: none)."""
        return next((o.mode for o in gl.holders if o.task.pid != h.task.pid), None)

    async def nq(self, gl: Glock, h: Holder) -> Holder:
        """``gfs2_glock_nq``: wait until ``h`` is granted (promoting through the DLM)."""
        gl.waiters.append(h)
        told = False
        try:
            while not self._local_ok(gl, h):
                if (
                    not gl.xmote
                    and gl.demote is None  # a pending demote goes first
                    and self._current(gl, h) is None  # run_queue: only for the first waiter
                    and not may_grant(gl.state, None, h.mode)
                ):
                    gl.xmote = True
                    self._count("do_xmote")
                    try:
                        # do_xmote: ask the DLM for the holder's state (make_mode)
                        gl.state = lm_state(
                            await self.dlm.lock(gl.name, dlm_mode(h.mode), waiter=h)
                        )
                    finally:
                        gl.xmote = False
                        gl.poke()
                    continue
                if gl.xmote and not told:
                    told = True  # waits for the request another holder sent
                    await self.dlm.waiting(gl.name, h)
                with trio.move_on_after(0.05):
                    await gl.changed.wait()
                self._reap(gl)
        finally:
            gl.waiters.remove(h)
        h.granted, h.demoted = True, False
        gl.holders.append(h)
        self._count("gfs2_glock_nq")
        return h

    def dq(self, gl: Glock, h: Holder) -> None:
        """``gfs2_glock_dq``: drop a holder; the glock stays cached in its mode."""
        if h in gl.holders:
            gl.holders.remove(h)
            self._count("gfs2_glock_dq")
        h.granted = False
        gl.poke()

    def allow_demote(self, gl: Glock, h: Holder, allow: bool) -> None:
        """``gfs2_holder_allow_demote`` / ``gfs2_holder_disallow_demote``."""
        h.may_demote = allow
        gl.poke()

    async def _bast(self, res: str, mode: str) -> None:
        """A blocking AST: another node wants DLM ``mode`` (``gdlm_bast`` -> ``gfs2_glock_cb``
        -> ``handle_callback``). Demote once no holder blocks it."""
        gl = next((g for g in self.glocks.values() if g.name == res), None)
        if gl is None:
            return
        # a blocking AST may overtake the grant it follows (a promote still in flight): it is
        # kept and acted on once the conversion is done
        state = bast_state(mode) or "UN"
        # handle_callback: a second, different demote request makes it an unlock
        gl.demote = state if gl.demote in (None, state) else "UN"
        gl.wanted = mode
        gl.demote_since = time.time()
        self._count("bast")
        gl.poke()
        told: set[int] = set()
        while gl.demote is not None:
            if gl.xmote or gl.blocking_demote():
                tids = {h.task.pid for h in gl.blocking_demote() if h.kind == "syscall"}
                if tids and tids != told:
                    told = tids
                    await self.dlm.blocked(gl.name, sorted(tids))
                with trio.move_on_after(0.05):
                    await gl.changed.wait()
                self._reap(gl)
                continue
            if (
                gl.state is None
                or gl.state == gl.demote_state
                or compatible(dlm_mode(gl.state), gl.wanted or "EX")
            ):
                gl.demote = gl.wanted = gl.demote_since = None  # nothing held in the way
                gl.poke()
                return
            await self._demote(gl)
            return

    async def _demote(self, gl: Glock) -> None:
        """``do_xmote`` to the demote state: write back and drop the cached pages, then
        convert. The pages go on every demote, to SH too: there ``inode_go_sync`` only writes
        them back and, when they were written through a mapping (``GIF_SW_PAGED``), unmaps
        them (``unmap_shared_mapping_range``), so that the next access faults again; the
        testbed sees a fault only as the FUSE READ of a page that is not cached, so it drops
        them (modelled)."""
        assert gl.state is not None and gl.demote is not None
        target = gl.demote_state
        gl.xmote = True
        try:
            await self._invalidate(gl.ino)  # inode_go_sync + inode_go_inval
            if self._hit is not None:
                # the pages are gone, the lock manager not yet asked: the window in which the
                # other node's request waits for this conversion (do_xmote -> lm_lock)
                await self._hit("do_xmote")
            for h in list(gl.holders):  # HIF_MAY_DEMOTE holders lose the glock
                if not may_grant(target, None, h.mode):
                    gl.holders.remove(h)
                    h.demoted, h.granted = True, False
            # do_xmote: from SH or DF to another held state is a try (LM_FLAG_TRY_1CB); what
            # the DLM cannot grant at once becomes an unlock (finish_xmote)
            try_ = target is not None and gl.state in ("SH", "DF")
            got = lm_state(await self.dlm.lock(gl.name, dlm_mode(target), try_=try_))
            if got != target:
                got = lm_state(await self.dlm.lock(gl.name, dlm_mode(None)))
            gl.state = got
            gl.demotes += 1
            self._count("demote")
        finally:
            gl.demote = gl.wanted = None
            gl.demote_since = None
            gl.xmote = False
            gl.poke()

    def snapshot(self, scope: str, node: str) -> list[dict[str, Any]]:
        """Glocks in the ``locks`` format of the state, with the cluster scope."""
        out = []
        for gl in self.glocks.values():
            out.append(
                {
                    "name": "glock",
                    "key": f"{scope.partition(':')[2]}:{gl.name}",
                    "desc": gl.desc,
                    "scope": scope,
                    "node": node,
                    "state": gl.state,
                    "demote": gl.demote,
                    "dlm_pid": self.dlm.dlm_pid,
                    "demotes": gl.demotes,
                    "xmote": gl.xmote,
                    "holders": [h.to_json() for h in gl.holders],
                    "waiters": [h.to_json() for h in gl.waiters],
                }
            )
        return out
