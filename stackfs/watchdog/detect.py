"""What counts as a finding: hung tasks, modelled kernel events, unexpected workload errors.

Hung tasks mirror ``check_hung_task()`` (kernel/hung_task.c): a task is hung when it has not been
scheduled for longer than the threshold, i.e. its switch count did not move. Here the task must
also be waiting on a watched FUSE connection (in ``request_wait_answer`` or elsewhere in FUSE
code) or be in state D on a watched mount or as a worker of a watched daemon. "Blocked since"
comes from the scheduler's ``se.exec_start`` (the last time the task ran) when /proc has it,
otherwise from the first scan that saw it blocked with the same switch count. A request that
completes wakes its caller, which moves the switch count and resets the clock: progress, not
mere liveness.

Modelled events (``oops``, ``recursive_locking``, ``lock_inversion``, ``barrier_timeout``) come
from any testbed daemon's state (docs/ARCHITECTURE.md); only events newer than the watchdog's
start count. Workload errors are told to the watchdog by the reproducer that ran the workload
(:meth:`Detector.workload_error`).
"""

from __future__ import annotations

import errno as errno_mod
import os
import time
from dataclasses import dataclass, field
from typing import Any

from stackfs.kernel.snapshot import EventSnap, RequestSnap
from stackfs.watchdog.daemons import DaemonView
from stackfs.watchdog.procscan import TaskInfo
from stackfs.watchdog.progress import Evidence

DEFAULT_THRESHOLD = 1.0
EVENT_TYPES = ("oops", "recursive_locking", "lock_inversion", "barrier_timeout")
#: lockdep-style warnings (e.g. autofs4's "autofs4_wait with the parent's i_rwsem held", seed
#: 001): reported with whatever report comes (also a run's final look when nothing hangs), but
#: never a finding or a verdict of their own
WARNING_TYPES = ("wait_under_lock", "lookup_enoent")


@dataclass
class Hang:
    """A task blocked for longer than the threshold."""

    task: TaskInfo
    since: float
    blocked_for: float
    #: "sched" (se.exec_start), "request" (its FUSE request's arrival at the daemon),
    #: "observed" (switch count unchanged across scans)
    how: str
    waiting: int | None = None
    #: the daemon serving its connection (or its request)
    daemon: DaemonView | None = None
    request: RequestSnap | None = None
    #: what the thread serving its request did meanwhile (:mod:`stackfs.watchdog.progress`),
    #: when a worker serves it: progress makes the task slow, not hung
    progress: Evidence | None = None

    @property
    def slow(self) -> bool:
        return self.progress is not None and self.progress.verdict == "progress"

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.to_json(),
            "since": self.since,
            "blocked_for": self.blocked_for,
            "how": self.how,
            "waiting": self.waiting,
            "daemon": (
                {
                    "pid": self.daemon.pid,
                    "comm": self.daemon.comm,
                    "fsname": self.daemon.fsname,
                    "alive": self.daemon.alive,
                    "testbed": self.daemon.testbed,
                }
                if self.daemon is not None
                else None
            ),
            "request": dict(self.request.raw) if self.request is not None else None,
            "progress": self.progress.to_json() if self.progress is not None else None,
        }


@dataclass
class ModelEvent:
    """An event from a testbed daemon's modelled kernel."""

    daemon_pid: int | None
    mountpoint: str
    fsname: str
    event: EventSnap

    @property
    def type(self) -> str:
        return self.event.type or "?"

    @property
    def time(self) -> float:
        return self.event.time or 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "daemon": self.daemon_pid,
            "mountpoint": self.mountpoint,
            "fsname": self.fsname,
            **self.event.raw,
        }


@dataclass
class WorkloadError:
    """An error a workload process got that it should not have (told by the reproducer)."""

    pid: int | None
    comm: str
    op: str
    path: str | None
    errno: int
    expected: str | None = None
    message: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def errname(self) -> str:
        return errno_mod.errorcode.get(self.errno, f"E{self.errno}")

    def render(self) -> str:
        who = f"{self.comm}/{self.pid}" if self.pid else self.comm
        call = f'{self.op}("{self.path}")' if self.path else self.op
        line = f"{who}: {call} = -{self.errname} ({os.strerror(self.errno)})"
        if self.expected:
            line += f", expected {self.expected}"
        if self.message:
            line += f": {self.message}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "op": self.op,
            "path": self.path,
            "errno": self.errno,
            "errname": self.errname,
            "expected": self.expected,
            "message": self.message,
            "time": self.time,
        }


class Detector:
    """Keeps what earlier scans saw, and turns a scan into findings."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, since: float | None = None) -> None:
        self.threshold = threshold
        self.start = time.time() if since is None else since
        self._seen: dict[int, tuple[int | None, float]] = {}  # tid -> (switches, first seen)
        self._events_seen: set[tuple[int | None, str | None, float | None, str | None]] = set()
        self.errors: list[WorkloadError] = []
        #: conn -> (in-flight request ids, time of the last completion seen)
        self._inflight: dict[int, tuple[set[int], float | None]] = {}

    # -- hung tasks --------------------------------------------------------------------------

    def observe(self, tasks: dict[int, TaskInfo], now: float | None = None) -> None:
        """Record a scan: a task whose switch count moved made progress since the last one."""
        now = time.time() if now is None else now
        for tid in list(self._seen):
            if tid not in tasks:
                del self._seen[tid]
        for tid, t in tasks.items():
            prev = self._seen.get(tid)
            if prev is None or prev[0] != t.switches:
                self._seen[tid] = (t.switches, now)

    def blocked_since(self, t: TaskInfo, now: float) -> tuple[float, str]:
        """When ``t`` last made progress: ``se.exec_start`` if known, else first seen stuck."""
        prev = self._seen.get(t.tid)
        first = prev[1] if prev is not None and prev[0] == t.switches else now
        if t.last_ran is not None and t.last_ran <= now:
            # the scheduler clock converts to wall time within some 10-50 ms (per-CPU clocks,
            # irq time): never earlier than the thread's own creation
            return max(t.last_ran, t.started or 0.0), "sched"
        return first, "observed"

    def hangs(
        self,
        tasks: dict[int, TaskInfo],
        relevant: set[int],
        daemons: dict[int, DaemonView],
        waiting: dict[int, int],
        now: float | None = None,
        min_blocked: float | None = None,
    ) -> list[Hang]:
        """Tasks among ``relevant`` (tids) blocked for at least the threshold (or
        ``min_blocked``)."""
        now = time.time() if now is None else now
        limit = self.threshold if min_blocked is None else min_blocked
        out = []
        for tid, t in tasks.items():
            if tid not in relevant or not t.blocked:
                continue
            since, how = self.blocked_since(t, now)
            view = daemons.get(t.conn) if t.conn is not None else None
            req = None
            for v in daemons.values():
                req = next((r for r in v.inflight() if r.pid == tid), None)
                if req is not None:
                    view = v
                    break
            # the task has waited at least since the daemon got its request (the scheduler's
            # clock restarts whenever a FUSE wait is woken and goes back to sleep)
            req_since = req.since if req is not None else None
            if req_since is not None and req_since < since:
                since, how = req_since, "request"
            blocked_for = now - since
            if blocked_for < limit:
                continue
            out.append(
                Hang(
                    t,
                    since,
                    blocked_for,
                    how,
                    waiting.get(t.conn) if t.conn is not None else None,
                    view,
                    req,
                )
            )
        out.sort(key=lambda h: h.since)
        return out

    def progress(self, daemons: dict[int, DaemonView], now: float | None = None) -> dict[int, Any]:
        """Per testbed connection: requests in flight and when one last completed."""
        now = time.time() if now is None else now
        out = {}
        for conn, view in daemons.items():
            if view.state is None:
                continue
            ids = {r.id for r in view.inflight() if r.id is not None}
            old, last = self._inflight.get(conn, (set(), None))
            if old - ids:
                last = now
            self._inflight[conn] = (ids, last)
            out[conn] = {"inflight": sorted(ids), "last_completion": last}
        return out

    # -- modelled events ----------------------------------------------------------------------

    def new_events(self, daemons: dict[int, DaemonView]) -> list[ModelEvent]:
        out = []
        for view in daemons.values():
            for ev in view.snapshot.events:
                if ev.type not in EVENT_TYPES + WARNING_TYPES:
                    continue
                if ev.time is not None and ev.time < self.start:
                    continue
                key = (view.pid, ev.type, ev.time, ev.summary)
                if key in self._events_seen:
                    continue
                self._events_seen.add(key)
                out.append(ModelEvent(view.pid, view.mountpoint, view.fsname, ev))
        return out

    # -- workload errors ----------------------------------------------------------------------

    def workload_error(self, err: WorkloadError) -> None:
        self.errors.append(err)
