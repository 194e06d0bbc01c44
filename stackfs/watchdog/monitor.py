"""The watchdog loop: poll cheaply, scan when something waits, report, recover.

Each :meth:`Watchdog.poll` reads the ``waiting`` counter of every watched FUSE connection (one
small sysfs read each). Only when one of them is not zero does it scan /proc (at most every
``scan_interval``); only when a scanned task has been blocked for the threshold does it read the
daemons' states, build the wait-for graph and make a :class:`~stackfs.watchdog.report.Report`.
Testbed daemons' states are also read every ``state_interval`` to catch modelled events (an oops
leaves nothing waiting). Idle cost: a few file reads every ``interval``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stackfs.kernel.snapshot import RequestSnap
from stackfs.runtime import fusectl
from stackfs.runtime.mountinfo import MountEntry
from stackfs.watchdog import clusterdep
from stackfs.watchdog import graph as graph_mod
from stackfs.watchdog.daemons import DaemonView, ServiceView, fuse_daemons, query_daemons
from stackfs.watchdog.daemons import services as daemon_services
from stackfs.watchdog.detect import (
    DEFAULT_THRESHOLD,
    WARNING_TYPES,
    Detector,
    Hang,
    ModelEvent,
    WorkloadError,
)
from stackfs.watchdog.procscan import Scanner, TaskInfo
from stackfs.watchdog.progress import ProgressTracker
from stackfs.watchdog.recover import Recovery, recover_connections
from stackfs.watchdog.report import Report, write_json
from stackfs.watchdog.scope import RunScope


class Watchdog:
    """Watches FUSE mounts for hangs, modelled kernel events and workload errors.

    ``mounts``: mount points to watch (None: every FUSE mount, also ones that appear later).
    ``threshold``: seconds without progress before a blocked task counts as hung.
    ``abort``: recover (abort, detach, reap) as soon as something is reported.
    ``report_dir`` / ``json_file``: where to write each report (text, JSON, picture).
    ``since``: ignore modelled events older than this (default: now).
    ``scope``: see only that run's tasks, mounts, daemons and services
    (:class:`~stackfs.watchdog.scope.RunScope`); None: everything on the machine.
    """

    def __init__(
        self,
        mounts: Sequence[str | os.PathLike[str]] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        interval: float = 0.05,
        scan_interval: float = 0.1,
        state_interval: float = 0.5,
        abort: bool = False,
        report_dir: str | os.PathLike[str] | None = None,
        json_file: str | os.PathLike[str] | None = None,
        picture: bool = True,
        since: float | None = None,
        event_settle: float | None = None,
        grace: float = 0.25,
        scope: RunScope | None = None,
    ) -> None:
        self.scope = scope
        self.targets = [os.path.abspath(m) for m in mounts] if mounts else None
        self.threshold = threshold
        self.interval = interval
        self.scan_interval = scan_interval
        self.state_interval = state_interval
        self.abort = abort
        self.report_dir = Path(report_dir) if report_dir else None
        self.json_file = Path(json_file) if json_file else None
        self.picture = picture
        self.grace = grace
        #: how long to keep watching after a modelled event before reporting it, so that the
        #: hang it causes is in the same report (an oops is reported after a short settle)
        self.event_settle = threshold + 0.3 if event_settle is None else event_settle
        self.scanner = Scanner()
        self.detector = Detector(threshold, since)
        self.progress = ProgressTracker(threshold)
        #: tid -> monotonic time before which a task found slow is not looked at again
        self._slow_until: dict[int, float] = {}
        #: tids already reported slow (a slow task is reported once, a hang whenever it stalls)
        self._slow_told: set[int] = set()
        self._defer_started: float | None = None
        self.fusectl_ok = fusectl.ensure_mounted()
        self.entries: dict[int, MountEntry] = {}
        self.seen_targets: set[str] = set()
        self.reports: list[Report] = []
        self._reported: set[int] = set()
        #: (tid, switch count) of hung tasks that turned out to wait on unwatched mounts
        self._irrelevant: set[tuple[int, int | None]] = set()
        self._tasks: dict[int, TaskInfo] = {}
        self._scan_every = scan_interval
        self._last_key: tuple[tuple[int, int], ...] = ()
        self._forming = False
        #: conn -> monotonic time before which its daemon's state is not polled again
        self._backoff: dict[int, float] = {}
        self._pending: list[ModelEvent] = []
        self._pending_since: float | None = None
        self._errors_reported = 0
        self._last_scan = self._last_state = self._last_mounts = -1e9
        self._refresh_mounts()

    # -- what is watched --------------------------------------------------------------------

    def _refresh_mounts(self) -> None:
        table = self.scanner.refresh_mounts()
        fuse = [e for e in table if e.is_fuse]
        if self.targets is None and self.scope is not None:
            pids = self.scope.pids()
            chosen = [e for e in fuse if e.is_testbed and self.scope.owns_mount(e, pids)]
        elif self.targets is None:
            chosen = fuse
        else:
            chosen = [e for e in fuse if e.mountpoint in self.targets]
        self.entries = {e.conn: e for e in chosen}
        self.seen_targets.update(e.mountpoint for e in chosen)
        self._last_mounts = time.monotonic()

    def watched(self) -> list[MountEntry]:
        """The FUSE mounts watched now."""
        return list(self.entries.values())

    def gone(self) -> bool:
        """Explicit mount points were given, were seen, and none is mounted any more."""
        return bool(self.targets) and bool(self.seen_targets) and not self.entries

    # -- the API for reproducers -------------------------------------------------------------

    def workload_error(
        self,
        pid: int | None,
        comm: str,
        op: str,
        path: str | None,
        err: int,
        expected: str | None = None,
        message: str | None = None,
    ) -> WorkloadError:
        """A workload process got ``err`` from ``op(path)`` and should not have."""
        e = WorkloadError(pid, comm, op, path, err, expected, message)
        self.detector.workload_error(e)
        return e

    # -- one step ----------------------------------------------------------------------------

    def waiting(self) -> dict[int, int]:
        out = {}
        for c in list(self.entries):
            n = fusectl.waiting(c)
            if n is not None:
                out[c] = n
        return out

    def poll(self) -> Report | None:
        """One step; returns a report when something was found (and recovered, with abort)."""
        mono = time.monotonic()
        if mono - self._last_mounts >= 1.0:
            self._refresh_mounts()
        waiting = self.waiting()
        busy = any(waiting.values())
        if any(e.is_testbed for e in self.entries.values()) and (
            mono - self._last_state >= self.state_interval
        ):
            self._last_state = mono
            ask = [
                e
                for e in self.entries.values()
                if e.is_testbed and self._backoff.get(e.conn, 0.0) <= mono
            ]
            views = query_daemons(ask, timeout=0.25)
            self.progress.observe(views)
            for c, v in views.items():
                if v.error is not None:  # a wedged daemon's loop: do not stall every poll
                    self._backoff[c] = time.monotonic() + 5.0
            new = self.detector.new_events(views)
            if new:
                self._pending.extend(new)
                if self._pending_since is None and any(e.type not in WARNING_TYPES for e in new):
                    self._pending_since = mono
        hangs: list[Hang] = []
        if busy and mono - self._last_scan >= self._scan_every:
            self._last_scan = mono
            hangs = self._hangs(self._scan(), waiting)
            # nothing new forming and the counters unchanged (a hang already reported, or
            # one on a mount we do not watch): scan less and less often, up to once a second
            key = tuple(sorted(waiting.items()))
            if hangs or self._forming or key != self._last_key:
                self._scan_every = self.scan_interval
            else:
                self._scan_every = min(self._scan_every * 2, max(1.0, self.scan_interval))
            self._last_key = key
        if hangs:
            pending, since, errors = list(self._pending), self._pending_since, self._errors_reported
            report = self._build(hangs=hangs, waiting=waiting)
            wait = self._cycle_still_forming(report, mono)
            if wait is None:
                self._defer_started = None
                return self._finish(report)
            # not yet: keep what _build consumed for the report that will be made
            self._pending, self._pending_since, self._errors_reported = pending, since, errors
            self._scan_every = min(self.scan_interval, wait)
            return None
        settle = (
            self.event_settle
            if not any(e.type == "oops" for e in self._pending)
            else min(self.event_settle, 0.3)
        )
        if (
            self._pending
            and self._pending_since is not None
            and mono - self._pending_since >= settle
        ):
            return self._finish(self._build(waiting=waiting, full=True))
        if len(self.detector.errors) > self._errors_reported:
            return self._finish(self._build(waiting=waiting, full=True))
        return None

    def _scan(self) -> dict[int, TaskInfo]:
        """The blocked tasks (of the scope's run only, with a scope)."""
        tasks = self.scanner.scan()
        if self.scope is None:
            return tasks
        return self.scope.tasks(tasks, self.scope.pids(), self.entries)

    def _candidates(self, tasks: dict[int, TaskInfo]) -> set[int]:
        conns = set(self.entries)
        return {
            t.tid for t in tasks.values() if t.conn in conns or (t.fuse_wait and t.conn is None)
        }

    def _hangs(self, tasks: dict[int, TaskInfo], waiting: dict[int, int]) -> list[Hang]:
        self._tasks = tasks
        self.detector.observe(tasks)
        mono = time.monotonic()
        fresh = {
            t
            for t in self._candidates(tasks)
            if t not in self._reported
            and (t, tasks[t].switches) not in self._irrelevant
            and self._slow_until.get(t, 0.0) <= mono
        }
        hangs = self.detector.hangs(tasks, fresh, {}, waiting)
        self._forming = bool(fresh) and not hangs
        return hangs

    def check(self) -> Report:
        """Look now, whatever the counters say: a report, with verdict ``ok`` if nothing."""
        self._refresh_mounts()
        waiting = self.waiting()
        tasks = self._scan()
        self.detector.observe(tasks)
        views = query_daemons([e for e in self.entries.values() if e.is_testbed], timeout=0.5)
        self._pending.extend(self.detector.new_events(views))
        self._tasks = tasks
        hangs = self.detector.hangs(tasks, self._candidates(tasks), {}, waiting)
        report = self._finish(self._build(hangs=hangs, waiting=waiting, full=True), keep_ok=True)
        assert report is not None  # keep_ok: never dropped
        return report

    # -- report ------------------------------------------------------------------------------

    def _daemon_views(self, tasks: dict[int, TaskInfo]) -> dict[int, DaemonView]:
        """Every testbed mount's daemon (states included) and the daemons of involved mounts."""
        table = [e for e in self.scanner.mounts if e.is_fuse]
        want = set(self.entries) | {t.conn for t in tasks.values() if t.conn is not None}
        chosen = [e for e in table if e.is_testbed or e.conn in want]
        if self.scope is not None:  # another run's daemons are not this run's story
            pids = self.scope.pids()
            chosen = [
                e
                for e in chosen
                if e.conn in self.entries or e.conn in want or self.scope.owns_mount(e, pids)
            ]
        foreign = fuse_daemons() if any(not e.is_testbed for e in chosen) else None
        return query_daemons(chosen, timeout=1.0, foreign=foreign)

    def _build(
        self,
        hangs: list[Hang] | None = None,
        waiting: dict[int, int] | None = None,
        full: bool = False,
    ) -> Report:
        now = time.time()
        waiting = dict(waiting or {})
        tasks = self._tasks
        if full and not hangs:
            tasks = self._tasks = self._scan()
            self.detector.observe(tasks)
            hangs = self.detector.hangs(tasks, self._candidates(tasks), {}, waiting)
        hangs = list(hangs or [])
        before = {h.task.tid: h.task.switches for h in hangs}
        views = self._daemon_views(tasks)
        all_waiting = {c: n for c in fusectl.connections() if (n := fusectl.waiting(c)) is not None}
        g = graph_mod.build(
            tasks,
            views,
            self.scanner,
            all_waiting,
            services=self._services() if _scoped_locks(views) else None,
        )
        # a task's connection may only be known from a daemon's request: hang details again
        relevant = self._relevant(g, tasks)
        g.keep_component(
            [f"task:{t}" for t in relevant]
            + [n.id for n in g.nodes.values() if n.kind == "conn" and n.attrs.conn in self.entries]
        )
        hangs = (
            self.detector.hangs(
                {h.task.tid: h.task for h in hangs}, relevant, views, all_waiting, now
            )
            if hangs
            else []
        )
        kept = {h.task.tid for h in hangs}
        self._irrelevant.update((t, sw) for t, sw in before.items() if t not in kept)
        in_graph = {t.tid: t for t in g.tasks.values() if f"task:{t.tid}" in g.nodes}
        also = [
            h
            for h in self.detector.hangs(
                in_graph, set(in_graph), views, all_waiting, now, min_blocked=0.0
            )
            if h.task.tid not in kept
        ]
        # with the daemons' requests in hand a task's wait may date back further than the
        # scheduler said: those past the threshold are hung too
        hangs += [h for h in also if h.blocked_for >= self.threshold]
        hangs.sort(key=lambda h: h.since)
        also = [h for h in also if h.blocked_for < self.threshold]
        cycles = graph_mod.find_cycles(g)
        hangs, slow, undecided = self._slow_or_hung(g, hangs)
        hung = {h.task.tid for h in hangs}
        cycle = next((c for c in cycles if hung & set(c.tasks)), cycles[0] if cycles else None)
        events = list(self._pending)
        self._pending, self._pending_since = [], None
        errors = self.detector.errors[self._errors_reported :]
        self._errors_reported = len(self.detector.errors)
        verdict, summary = _verdict(hangs, cycle, events, errors, g, self.threshold, slow)
        involved = {n.attrs.conn for n in g.nodes.values()}
        involved |= {h.task.conn for h in hangs}
        waiting = {c: n for c, n in all_waiting.items() if c in involved or c in self.entries}
        report = Report(
            verdict=verdict,
            summary=summary,
            time=now,
            threshold=self.threshold,
            hangs=hangs,
            slow=slow,
            undecided=undecided,
            also_blocked=also,
            blocked=list(in_graph.values()),
            cycle=cycle,
            cycles=cycles,
            graph=g,
            events=events,
            errors=errors,
            daemons={c: v for c, v in views.items() if c in involved or c in self.entries},
            waiting=waiting,
            progress=self.detector.progress(views, now),
        )
        report.timing = _timing(report, g, now)
        # an ABBA across nodes shows in the merged lock order even when nothing hangs
        report.notes.extend(clusterdep.render(c) for c in clusterdep.inversions(views))
        report.notes.extend(clusterdep.dlm_lines(g.services))
        return report

    def _slow_or_hung(
        self, g: graph_mod.WaitGraph, hangs: list[Hang]
    ) -> tuple[list[Hang], list[Hang], bool]:
        """(hung, slow, undecided): a task whose request the daemon is serving in a worker
        thread that makes progress (CPU time, I/O: :mod:`stackfs.watchdog.progress`) is slow,
        not hung. A request not read, served by nobody (no worker: the handler awaits
        something), or by a worker that waits on something in the graph (a cycle included) or
        made no progress over the threshold, is a hang; ``undecided``: some worker was not
        sampled over long enough yet."""
        hung: list[Hang] = []
        slow: list[Hang] = []
        undecided = False
        for h in hangs:
            if h.request is None:  # paired by opcode in the graph (the request has no pid)
                req_node = next(
                    (
                        g.nodes[e.dst]
                        for e in g.out(graph_mod.task_id(h.task.tid))
                        if e.kind == "fuse_wait" and g.nodes[e.dst].kind == "request"
                    ),
                    None,
                )
                h.request = graph_mod.request_of(req_node) if req_node is not None else None
            served = _served_by(g, h.task.tid)
            if served is not None:
                req_node, worker = served
                daemon, rid = req_node.attrs.daemon, graph_mod.request_of(req_node).id
                if isinstance(daemon, int) and isinstance(rid, int):
                    h.progress = self.progress.judge(daemon, rid, worker)
                    undecided |= h.progress.verdict == "unknown"
            (slow if h.slow else hung).append(h)
        return hung, slow, undecided

    def _cycle_still_forming(self, report: Report, mono: float) -> float | None:
        """Seconds to wait before reporting ``report``, or None to report now.

        Like the kernel's hung-task detector, a task is named hung only once it has been
        blocked for the threshold. The tasks of one hang block one after another (``mv`` first,
        the copy-up's worker a little later), and the blocked-since estimates are good to a few
        tens of milliseconds, so the report waits (at most one more threshold) until every task
        of the cycle, and every task of the graph that is about to cross, is over it too."""
        if self._defer_started is None:
            self._defer_started = mono
        if mono - self._defer_started >= self.threshold:
            return None
        cycle = set(report.cycle.tasks) if report.cycle is not None else set()
        hung = {h.task.tid for h in report.hangs}
        short = [
            h.blocked_for
            for h in report.also_blocked
            if h.task.tid not in hung
            and (h.task.tid in cycle or h.blocked_for >= 0.75 * self.threshold)
        ]
        if not short:
            # a worker not sampled long enough: look again (at most one threshold more, then
            # no evidence of progress is a hang)
            return self.scan_interval if report.undecided else None
        return max(0.01, self.threshold - min(short))

    def _services(self) -> dict[int, ServiceView]:
        """The service daemons (lock managers, automounters): the scope's run's only."""
        found = daemon_services()
        if self.scope is None:
            return found
        pids = self.scope.pids()
        return {p: s for p, s in found.items() if self.scope.owns_service(p, s.run_id, pids)}

    def _relevant(self, g: graph_mod.WaitGraph, tasks: dict[int, TaskInfo]) -> set[int]:
        """Tasks connected in the graph to a watched connection (either direction)."""
        conns = set(self.entries)
        seeds = [n.id for n in g.nodes.values() if n.attrs.conn in conns]
        seeds += [f"task:{t.tid}" for t in tasks.values() if t.conn in conns]
        seen = g.component(seeds)
        out = {g.nodes[n].attrs.tid for n in seen if g.nodes[n].kind == "task"}
        out |= {t.tid for t in tasks.values() if t.conn in conns}
        return {t for t in out if isinstance(t, int)}

    def _finish(self, report: Report, keep_ok: bool = False) -> Report | None:
        mono = time.monotonic()
        for h in report.slow:
            self._slow_until[h.task.tid] = mono + self.threshold
        if report.verdict == "slow" and not keep_ok and not report.events:
            if {h.task.tid for h in report.slow} <= self._slow_told:
                return None  # said already; a hang is reported when the worker stalls
        if report.verdict == "ok" and not keep_ok:
            return None
        self._slow_told.update(h.task.tid for h in report.slow)
        self._reported.update(h.task.tid for h in report.hangs + report.also_blocked)
        # only a cycle or a request nobody serves is aborted; slow work never
        if self.abort and report.found:
            report.recovery = self.recover(report)
        if self.report_dir is not None:
            sub = (
                self.report_dir
                if not self.reports
                else self.report_dir / f"report-{len(self.reports) + 1}"
            )
            report.write(sub, picture=self.picture)
        if self.json_file is not None:
            write_json(report, self.json_file)
        self.reports.append(report)
        return report

    def recover(self, report: Report) -> Recovery:
        """Abort the report's connections, detach, reap, verify."""
        rec = recover_connections(
            report.involved_conns(),
            report.involved_tids(),
            scanner=self.scanner,
            grace=self.grace,
            mountpoints=report.involved_mounts(),
        )
        self._refresh_mounts()
        return rec

    # -- drivers -----------------------------------------------------------------------------

    def run(self, timeout: float | None = None, stop: Callable[[], bool] | None = None) -> Report:
        """Poll until a verdict (returned), ``stop()`` is true or ``timeout`` passes (then a
        final :meth:`check`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            report = self.poll()
            if report is not None and report.verdict != "slow":
                return report
            if (stop is not None and stop()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return self.check()
            time.sleep(self.interval)

    async def run_async(
        self, timeout: float | None = None, stop: Callable[[], bool] | None = None
    ) -> Report:
        """:meth:`run` for trio code: /proc and socket reads run in a worker thread."""
        import trio

        deadline = None if timeout is None else trio.current_time() + timeout
        while True:
            report = await trio.to_thread.run_sync(self.poll, abandon_on_cancel=True)
            if report is not None and report.verdict != "slow":
                return report
            if (stop is not None and stop()) or (
                deadline is not None and trio.current_time() >= deadline
            ):
                return await trio.to_thread.run_sync(self.check, abandon_on_cancel=True)
            await trio.sleep(self.interval)


def _verdict(
    hangs: list[Hang],
    cycle: graph_mod.Cycle | None,
    events: list[ModelEvent],
    errors: list[WorkloadError],
    g: graph_mod.WaitGraph,
    threshold: float,
    slow: list[Hang] | None = None,
) -> tuple[str, str]:
    types = [e.type for e in events]
    if hangs and cycle is not None:
        n = len(hangs)
        return "deadlock", (
            f"{cycle.title}; {n} task{'s' if n != 1 else ''} blocked for more "
            f"than {threshold:g} s; cycle: {cycle.summary}"
        )
    if "oops" in types:
        ev = events[types.index("oops")]
        return "oops", ev.event.summary or "oops"
    held = [h for h in hangs if _held_by_the_testbed(g, h.task.tid)]
    hangs = [h for h in hangs if h not in held]
    if hangs:
        why = []
        for h in hangs:
            tid = f"task:{h.task.tid}"
            path = _path_from(g, tid)
            why.append(f"{h.task.comm}/{h.task.tid}: " + " -> ".join(path))
        n = len(hangs)
        return "hang", (
            f"{n} task{'s' if n != 1 else ''} blocked for more than {threshold:g} s, "
            "no cycle: " + "; ".join(why)
        )
    for kind in ("recursive_locking", "lock_inversion", "barrier_timeout"):
        if kind in types:
            return kind, events[types.index(kind)].event.summary or kind
    if errors:
        return "error", "; ".join(e.render() for e in errors)
    if slow:
        n = len(slow)
        return "slow", (
            f"{n} task{'s' if n != 1 else ''} blocked for more than {threshold:g} s, slow, not "
            "hung (the daemon is serving the request): " + "; ".join(_slow_line(h) for h in slow)
        )
    if held:
        n = len(held)
        return "ok", (
            f"{n} task{'s' if n != 1 else ''} held at an injection point (the testbed's forcing, "
            "not a hung task), no modelled event, no unexpected error"
        )
    return "ok", "no hung task, no modelled event, no unexpected error"


def _held_by_the_testbed(g: graph_mod.WaitGraph, tid: int) -> bool:
    """Whether the task's wait ends at an injection point: its request (or the request of the
    daemon worker that serves it, in a stack) is held at a forcing barrier that is still
    gathering its round, or at a delay. That is the testbed's instrumentation, however slow
    the machine, not a hung task: a barrier whose round never fills ends in a
    ``barrier_timeout`` event, and a task hung anywhere else is still reported."""
    node, seen = f"task:{tid}", set()
    while node in g.nodes and node not in seen:
        seen.add(node)
        edges = g.out(node)
        if not edges:
            return False
        if any(e.kind == "barrier" for e in edges):
            return True
        node = edges[0].dst
    return False


def _served_by(g: graph_mod.WaitGraph, tid: int) -> tuple[graph_mod.Node, int] | None:
    """(request node, worker tid) when the task's wait ends at a FUSE request that a daemon
    serves in a worker thread which waits on nothing in the graph; None for anything else
    (a request not read or not answered, a lock, a cycle: the walk meets a node twice)."""
    node, seen = graph_mod.task_id(tid), set()
    while node in g.nodes and node not in seen:
        seen.add(node)
        edges = g.out(node)
        if not edges:
            return None
        if g.nodes[node].kind == "request":
            if len(edges) != 1 or edges[0].kind != "served_by":
                return None
            worker = g.nodes.get(edges[0].dst)
            wtid = worker.attrs.tid if worker is not None else None
            if worker is None or g.out(worker.id) or not isinstance(wtid, int):
                return None
            return g.nodes[node], wtid
        node = edges[0].dst
    return None


def _slow_line(h: Hang) -> str:
    """One task's slow work, e.g. ``sh/5858 waits for write (req #6, 2.3 s), served in worker
    thread 5861: 312 MB written, 0.95 s of CPU in the last 1.0 s``."""
    req = h.request or RequestSnap.parse({})
    ev = h.progress
    at = f"req #{req.id}" + (f", {req.age:.1f} s" if req.age is not None else "")
    return (
        f"{h.task.comm}/{h.task.tid} waits for {req.op or 'a request'} ({at}), served in "
        f"worker thread {ev.worker if ev is not None else '?'}: "
        + (ev.render() if ev is not None else "")
    )


def _path_from(g: graph_mod.WaitGraph, start: str) -> list[str]:
    out, node, seen = [], start, set()
    while node in g.nodes and node not in seen:
        seen.add(node)
        edges = g.out(node)
        if not edges:
            break
        e = edges[0]
        out.append(f"{e.label} {graph_mod.short(g, e.dst)}")
        node = e.dst
    return out


def _timing(r: Report, g: graph_mod.WaitGraph, now: float) -> dict[str, Any]:
    t: dict[str, Any] = {"detected": now}
    if r.hangs:
        t["hang_since"] = min(h.since for h in r.hangs)
    if r.cycle is not None:
        formed = []
        for tid in r.cycle.tasks:
            task = g.tasks.get(tid)
            if task is not None and task.last_ran is not None:
                formed.append(max(task.last_ran, task.started or 0.0))
        if formed:
            t["cycle_formed"] = max(formed)
    if "cycle_formed" in t:
        t["latency"], t["latency_from"] = (
            now - t["cycle_formed"],
            "the last edge of the cycle formed (the last task of the cycle blocked)",
        )
    elif "hang_since" in t:
        t["latency"], t["latency_from"] = now - t["hang_since"], "the first hung task blocked"
    elif r.events:
        t["latency"], t["latency_from"] = (
            now - min(e.time for e in r.events),
            "the first modelled event",
        )
    return t


def _scoped_locks(views: dict[int, DaemonView]) -> bool:
    """Does any daemon report a cluster-scoped lock (one served by a lock manager)?"""
    return any(lock.scope for v in views.values() for lock in v.snapshot.locks)
