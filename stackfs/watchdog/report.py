"""The watchdog's report in three forms: kernel-style text, JSON, and a picture of the graph.

The text is the kernel log records of :mod:`stackfs.watchdog.kernfmt` (what ``--kmsg`` writes),
without their ``stackfs[PID]:`` tag, each followed by the testbed's own evidence lines, which
the kernel cannot print:

* a task in state D: the hung-task block (``INFO: task stat:2861 blocked for more than 1
  seconds.``, the taint line, ``sched_show_task()`` and the ``Call Trace`` from
  ``/proc/TID/stack``, ``debug_show_blocker()``); a task asleep in state S in a FUSE wait: the
  testbed's own block (``blocked in an interruptible FUSE wait``), then the same task line;
  after either, the FUSE connection, its ``waiting`` count, the daemon and the request it is
  serving;
* ``Showing all locks held in the system:`` (``debug_show_all_locks``) from the modelled locks
  and the i_rwsem holds inferred from stacks;
* for a lock cycle, lockdep's "possible circular locking dependency detected" (or "possible
  recursive locking detected" for one task), then the wait-for cycle; for a cycle through a
  FUSE request, the testbed's ``WARNING: deadlock:`` block with the "Possible unsafe locking
  scenario" table, one column per task (kernel/locking/lockdep.c,
  ``print_circular_lock_scenario``);
* for an oops, the ``kernel BUG at ...`` block (of the release the model stands for) and every
  racing task's call chain in the form of the crash dump of seed 003.

The JSON has the same content; the picture (``waitgraph.svg``/``.png``) is drawn by graphviz
``dot`` when it is installed (:mod:`stackfs.watchdog.picture`).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackfs.kernel.snapshot import RequestSnap, TaskRef
from stackfs.watchdog import findings, kernfmt
from stackfs.watchdog.daemons import DaemonView
from stackfs.watchdog.detect import Hang, ModelEvent, WorkloadError
from stackfs.watchdog.escape import path_text, printable, printable_json
from stackfs.watchdog.graph import Cycle, Segment, WaitGraph, request_of, short
from stackfs.watchdog.picture import write_picture
from stackfs.watchdog.procscan import TaskInfo


@dataclass
class Report:
    """Everything the watchdog found, and what recovery did.

    ``verdict``: ``deadlock`` (a hang with a cycle), ``hang`` (no cycle: e.g. a daemon alive but
    not answering), ``oops``, ``recursive_locking``, ``lock_inversion``, ``error`` (a workload
    got an unexpected error), ``slow`` (only tasks whose requests are being served with
    progress: no finding), ``ok`` (nothing found).
    """

    verdict: str
    summary: str
    time: float
    threshold: float
    hangs: list[Hang] = field(default_factory=list)
    #: tasks blocked for longer than the threshold on a request the daemon is serving, with
    #: progress (``Hang.progress``): slow, not hung; never aborted
    slow: list[Hang] = field(default_factory=list)
    #: some worker was not sampled over long enough to tell slow from hung
    undecided: bool = False
    #: other blocked tasks of the wait-for graph, blocked for less than the threshold so far
    also_blocked: list[Hang] = field(default_factory=list)
    blocked: list[TaskInfo] = field(default_factory=list)
    cycle: Cycle | None = None
    cycles: list[Cycle] = field(default_factory=list)
    graph: WaitGraph | None = None
    events: list[ModelEvent] = field(default_factory=list)
    errors: list[WorkloadError] = field(default_factory=list)
    daemons: dict[int, DaemonView] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)
    progress: dict[int, Any] = field(default_factory=dict)
    #: detection timing: "cycle_formed", "hang_since", "detected", "latency" (seconds from the
    #: moment the last edge of the cycle formed, or the first hung task blocked, to the report)
    timing: dict[str, Any] = field(default_factory=dict)
    recovery: Any = None
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Something to act on (and to abort, with ``--abort``): not ``ok``, not ``slow``."""
        return self.verdict not in ("ok", "slow")

    @property
    def latency(self) -> float | None:
        return self.timing.get("latency")

    # -- what is involved -------------------------------------------------------------------

    def _slow_only(self) -> tuple[set[int], set[int]]:
        """(connections, tids) that only slow work involves: what recovery leaves alone."""
        g = self.graph
        if not self.slow or g is None:
            return set(), set()

        def reach(tids: set[int]) -> tuple[set[int], set[int]]:
            nodes = g.reachable([f"task:{t}" for t in tids])
            conns = {c for n in nodes if (c := g.nodes[n].attrs.conn) is not None}
            tasks = {t for n in nodes if (t := g.nodes[n].attrs.tid) is not None}
            return conns, tasks

        slow_conns, slow_tids = reach({h.task.tid for h in self.slow})
        slow_conns |= {c for h in self.slow if (c := h.task.conn) is not None}
        rest = {t.tid for t in self.blocked if t.blocked} | {h.task.tid for h in self.hangs}
        rest -= {h.task.tid for h in self.slow}
        rest_conns, rest_tids = reach(rest)
        if self.cycle is not None:
            rest_tids |= set(self.cycle.tasks)
        return slow_conns - rest_conns, slow_tids - rest_tids

    def involved_conns(self) -> list[int]:
        """The FUSE connections the findings involve (what recovery aborts)."""
        conns: set[int] = set()
        for h in self.hangs:
            if h.task.conn is not None:
                conns.add(h.task.conn)
        if self.graph is not None:
            for n in self.graph.nodes.values():
                if n.attrs.conn is not None:
                    conns.add(n.attrs.conn)
        for t in self.blocked:
            if t.conn is not None:
                conns.add(t.conn)
        return sorted(conns - self._slow_only()[0])

    def involved_mounts(self) -> dict[int, str]:
        """conn -> mount point, as seen when the findings were made."""
        out = {c: v.mountpoint for c, v in self.daemons.items()}
        for t in [h.task for h in self.hangs] + self.blocked:
            if t.conn is not None and t.mountpoint:
                out.setdefault(t.conn, t.mountpoint)
        return out

    def involved_tids(self) -> list[int]:
        tids = {h.task.tid for h in self.hangs}
        if self.graph is not None:
            tids.update(t for t in self.graph.tasks if f"task:{t}" in self.graph.nodes)
        return sorted(tids - self._slow_only()[1])

    # -- forms -------------------------------------------------------------------------------

    def text(self) -> str:
        return printable(render_text(self))

    def to_json(self) -> dict[str, Any]:
        """The JSON form; every path in it escaped (:mod:`stackfs.watchdog.escape`)."""
        out: dict[str, Any] = printable_json(self._json())
        return out

    def _json(self) -> dict[str, Any]:
        return {**self.findings(), "text": self.text()}

    def findings(self) -> dict[str, Any]:
        """The JSON form without its ``text`` (what :mod:`stackfs.watchdog.kernfmt` renders);
        paths unescaped."""
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "time": self.time,
            "threshold": self.threshold,
            "kernel": os.uname().release,
            "hangs": [h.to_json() for h in self.hangs],
            "slow": [h.to_json() for h in self.slow],
            "also_blocked": [h.to_json() for h in self.also_blocked],
            "blocked": [t.to_json() for t in self.blocked],
            "cycle": self.cycle.to_json() if self.cycle else None,
            "cycles": [c.to_json() for c in self.cycles],
            "graph": self.graph.to_json() if self.graph else None,
            "events": [e.to_json() for e in self.events],
            "errors": [e.to_json() for e in self.errors],
            "daemons": {str(c): v.to_json() for c, v in self.daemons.items()},
            "waiting": {str(c): n for c, n in self.waiting.items()},
            "progress": {str(c): p for c, p in self.progress.items()},
            "timing": self.timing,
            "recovery": self.recovery.to_json() if self.recovery is not None else None,
            "files": self.files,
            "notes": self.notes,
        }

    def write(self, directory: str | os.PathLike[str], picture: bool = True) -> dict[str, str]:
        """Write ``report.txt``, ``report.json`` and the picture into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        oopses = [e.to_json() for e in self.events if e.type == "oops"]
        if picture and ((self.graph is not None and self.graph.nodes) or oopses):
            title = (
                self.cycle.title
                if self.cycle
                else f"oops: {self.summary.split(' - ')[0]}"
                if oopses
                else f"{self.verdict}, no cycle"
            )
            self.files.update(
                write_picture(
                    self.graph,
                    self.cycle,
                    d,
                    self.notes,
                    {h.task.tid for h in self.hangs},
                    title,
                    oopses,
                )
            )
        (d / "report.txt").write_text(self.text() + "\n")
        self.files["text"] = str(d / "report.txt")
        self.files["json"] = str(d / "report.json")
        write_json(self, d / "report.json")
        return dict(self.files)


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=1, default=str) + "\n")


# -- text ----------------------------------------------------------------------------------------


def _clock(t: float | None) -> str:
    if not t:
        return "?"
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def lock_name(g: WaitGraph | None, nid: str | None) -> str:
    """How the scenario table names a lock node."""
    if g is None or nid is None or nid not in g.nodes:
        return "?"
    n = g.nodes[nid]
    if n.kind == "klock":
        return f"{kernfmt.lock_class(n.attrs.is_dir)} {n.attrs.path}"
    desc = n.attrs.desc
    return f"{n.attrs.ident}" + (f" {desc}" if desc else "")


def _task_name(g: WaitGraph | None, tid: int) -> str:
    if g is not None and tid in g.tasks:
        return g.tasks[tid].name()
    if g is not None and f"task:{tid}" in g.nodes:
        return f"{g.nodes[f'task:{tid}'].attrs.comm or '?'}/{tid}"
    return f"?/{tid}"


def _texts(records: list[kernfmt.Record]) -> list[str]:
    """Kernel log records as report.txt has them: their text, without the tag."""
    return [r.text for r in records]


def render_blocked(h: Hang) -> list[str]:
    """The testbed's own block of a task that is not hung (yet): slow (its request is being
    served with progress) or blocked for less than the threshold so far."""
    t = h.task
    if h.slow:
        head = (
            f"task {t.comm}:{t.tid} blocked for {h.blocked_for:.2f} seconds: slow, not hung "
            "(the daemon is serving its request; no hung-task report):"
        )
    else:
        head = (
            f"task {t.comm}:{t.tid} blocked for {h.blocked_for:.2f} seconds "
            "(under the threshold so far; it is part of the wait-for graph):"
        )
    return [
        head,
        f"task:{t.comm:<15.15} state:{t.state} pid:{t.tid:<5d} tgid:{t.pid:<5d} "
        f"ppid:{t.ppid:<6d} wchan:{t.wchan or '?'}",
        "Call Trace:",
        " <TASK>",
        *(f" {line}" for line in t.stack),
        " </TASK>",
    ]


def render_evidence(h: Hang, g: WaitGraph | None = None) -> list[str]:
    """What the testbed knows of a blocked task and the kernel cannot print: since when, the
    syscall, the FUSE connection and its daemon, the request, the worker's progress, the locks
    it waits for."""
    t = h.task
    out = [
        f" blocked for {h.blocked_for:.2f} s (since {_clock(h.since)}, "
        + {"sched": "last ran per se.exec_start)", "request": "its FUSE request's arrival)"}.get(
            h.how, "switch count unchanged)"
        ),
    ]
    if t.syscall is not None:
        out.append(f" in syscall: {t.syscall.render()}")
    if t.conn is not None and not t.fuse_wait:
        out.append(f" on mount: {t.mountpoint} (FUSE connection {t.conn}, {t.fsname})")
    elif t.conn is not None:
        d = h.daemon
        who = (
            f"daemon {d.comm or '?'}/{d.pid}"
            + (" (alive)" if d.alive else " (gone)" if d.alive is False else "")
            if d is not None and d.pid
            else "daemon unknown"
        )
        out.append(
            f" waits on: FUSE connection {t.conn} at {t.mountpoint} ({t.fsname}), "
            f"waiting={h.waiting if h.waiting is not None else '?'}, {who}"
            + (f" [found by {t.conn_how}]" if t.conn_how else "")
        )
    elif t.fuse_wait:
        out.append(" waits on: a FUSE connection that could not be identified")
    r = h.request
    if r is not None:
        out.append(
            f" request: #{r.id} {r.op}"
            + (f' "{path_text(r.name)}"' if r.name else "")
            + (f" (ino {r.ino})" if r.ino is not None else "")
            + (f", in flight {r.age:.2f} s" if r.age is not None else "")
            + (f", served by worker thread {r.worker}" if r.worker else "")
            + ("" if r.task else ", caller paired by opcode (the request has no pid)")
        )
    if h.progress is not None:
        out.append(f" progress of worker thread {h.progress.worker}: {h.progress.render()}")
    if g is not None:
        for e in g.out(f"task:{t.tid}"):
            if g.nodes[e.dst].kind in ("lock", "klock"):
                holders = [short(g, x.dst) for x in g.out(e.dst) if x.kind == "held_by"]
                out.append(
                    f" waits for: {short(g, e.dst)} ({e.label})"
                    + (f", held by {', '.join(holders)}" if holders else "")
                )
    return out


def render_locks_held(data: findings.Findings) -> list[str]:
    """``Showing all locks held in the system:`` (:func:`kernfmt.show_all_locks`), modelled
    and inferred."""
    out = _texts(kernfmt.show_all_locks(data))
    if not out:
        out = ["", "Showing all locks held in the system:", "(no lock holder known)", "", "=" * 45]
    return out


def _scenario(g: WaitGraph, cycle: Cycle) -> list[str]:
    """The "Possible unsafe locking scenario" table, one column per task of the cycle."""
    order: list[int] = []
    for s in cycle.segments:
        if s.waiter not in order:
            order.append(s.waiter)
    col = {tid: i for i, tid in enumerate(order)}
    held_by: dict[int, Segment] = {s.holder: s for s in cycle.segments}
    rows: list[tuple[int, str]] = []
    for tid in order:  # phase 1: what each task holds that another one waits for
        hs = held_by.get(tid)
        if hs is not None and hs.lock is not None:
            rows.append(
                (col[tid], f"{'r' if hs.hold_mode == 'read' else ''}lock({lock_name(g, hs.lock)});")
            )
    for s in cycle.segments:  # phase 2: what each task waits for
        if s.request is not None:
            req = request_of(g.nodes[s.request]) if s.request in g.nodes else RequestSnap.parse({})
            what = f"{req.op or '?'}" + (f' "{req.name}"' if req.name else "")
            rows.append((col[s.waiter], f"fuse_request({what});"))
            if s.lock is None and s.holder in col:
                rows.append((col[s.holder], f"<serves {what}>"))
        if s.lock is not None:
            who = col[s.waiter]
            rows.append(
                (who, f"{'r' if s.wait_mode == 'read' else ''}lock({lock_name(g, s.lock)});")
            )
    width = max([len(t) for _, t in rows] + [24]) + 4
    width = min(width, 60)

    def line(cells: list[str]) -> str:
        return "       " + "".join(c.ljust(width) for c in cells[:-1]) + cells[-1]

    n = len(order)
    out = [" Possible unsafe locking scenario:", ""]
    out.append(line([f"CPU{i}" for i in range(n)]))
    out.append(line(["----"] * n))
    out.append(line([_task_name(g, t) for t in order]))
    for c, text in rows:  # lockdep: CPU0 rows at column 2, the others under their header
        out.append(("  " if c == 0 else " " * (7 + width * c)) + text)
    out += ["", " *** DEADLOCK ***", ""]
    return out


def render_cycle(
    r: Report, cycle: Cycle, data: findings.Findings, ident: tuple[str, str, str]
) -> list[str]:
    """The report's cycle: a lock cycle in lockdep's words (:func:`kernfmt.cycle_lockdep`),
    a cycle through a FUSE request in the testbed's own ``WARNING: deadlock:`` block; then the
    wait-for cycle."""
    g = r.graph
    assert g is not None
    lockdep = _texts(kernfmt.cycle_lockdep(data, ident)) if cycle is r.cycle else []
    if lockdep:
        s0 = cycle.segments[0]
        if cycle.kind == "recursive_locking" and s0.request:
            lockdep += [
                f"(the new attempt is made for it by the daemon serving {short(g, s0.request)})",
                "",
            ]
        return lockdep + _cycle_path(g, cycle)
    header = (
        "WARNING: possible circular locking dependency detected"
        if cycle.kind == "lock_inversion"
        else f"WARNING: deadlock: {cycle.title}"
    )
    out = [
        "",
        kernfmt.RULE_CIRC,
        header,
        f"{kernfmt.uts_line(ident)} (stackfs watchdog: a cycle in the wait-for graph)",
        kernfmt.RULE_CIRC2,
    ]
    for i, s in enumerate(cycle.segments):
        w, h = _task_name(g, s.waiter), _task_name(g, s.holder)
        comp = g.nodes.get(s.lock or "")
        if comp is not None and comp.kind == "completion":  # a wait queue held by a task
            lead = (
                f"{w} waits for the reply to {short(g, s.request)}, whose handler waits "
                "for completion:"
                if s.request is not None
                else f"{w} waits for completion:"
            )
            out += [
                lead,
                f" ({short(g, comp.id)}), at: {s.wait_at or '?'}  [modelled wait queue]",
                "",
                f"which only {h} can complete:",
                "",
            ]
            continue
        if s.lock is not None:
            lead = (
                f"{w} is trying to acquire lock:"
                if i == 0 or s.request is None
                else (
                    f"{w} waits for the reply to {short(g, s.request)}, whose handler is trying to "
                    "acquire lock:"
                )
            )
            if i == 0 and s.request is not None:
                lead = (
                    f"{w} waits for the reply to {short(g, s.request)}, whose handler is "
                    "trying to acquire lock:"
                )
            out += [
                lead,
                f" ({lock_name(g, s.lock)}), at: {s.wait_at or '?'} [{s.wait_mode or '?'}]",
                "",
                f"but the lock is held by {h}:",
                f" ({lock_name(g, s.lock)}), at: {s.hold_at or '?'} [{s.hold_mode or '?'}]",
                "",
            ]
        elif s.request is not None:
            node = g.nodes.get(s.request)
            dpid = node.attrs.daemon if node else None
            view = next((v for v in g.daemons.values() if v.pid == dpid), None)
            daemon = f"{view.name()} ({view.fsname})" if view else str(dpid)
            out += [
                f"{w} waits in {s.wait_at or 'request_wait_answer'} for the reply to "
                f"{short(g, s.request)},",
                f"which daemon {daemon} is serving in thread {h}.",
                "",
            ]
        else:
            out += [f"{w} waits for {h}.", ""]
    out += _cycle_path(g, cycle)
    out += ["other info that might help us debug this:", ""]
    out += _scenario(g, cycle)
    return out


def _model_event_of(r: Report, cycle: Cycle) -> ModelEvent | None:
    """The modelled ``recursive_locking`` event that a one-task lock cycle is, if recorded."""
    if cycle.kind != "recursive_locking" or r.graph is None or not cycle.segments:
        return None
    seg = cycle.segments[0]
    node = r.graph.nodes.get(seg.lock or "")
    if node is None or node.kind != "lock":
        return None
    for ev in r.events:
        tasks = ev.event.tasks
        if (
            ev.type == "recursive_locking"
            and ev.daemon_pid == node.attrs.daemon
            and ev.event.detail.lock == node.attrs.ident
            and tasks
            and tasks[0].pid == seg.waiter
        ):
            return ev
    return None


def _cycle_path(g: WaitGraph, cycle: Cycle) -> list[str]:
    out = ["the wait-for cycle:", f"  {short(g, cycle.nodes[0])}"]
    for e in cycle.edges:
        out.append(f"    -> {e.label}{' (inferred)' if e.inferred else ''} -> {short(g, e.dst)}")
    return out + [""]


def render_event(ev: ModelEvent, ident: tuple[str, str, str] | None = None) -> list[str]:
    """A modelled kernel event: the kernel's records (:func:`kernfmt.model_event`, of the
    release the model stands for), then where it happened and, for an oops, every racing
    task's call chain (crash dump form)."""
    e = ev.event
    where = f"[stackfs model: {ev.fsname} on {ev.mountpoint}, {_clock(ev.time)}]"
    if ev.type not in ("oops", "recursive_locking", "lock_inversion"):
        return ["", f"stackfs: {ev.type}: {e.summary or ''} {where}"]
    ident = ident or kernfmt.kernel_ident()
    records = _texts(kernfmt.model_event(e, ident))
    out = ([""] if records and records[0] else []) + records + [where]  # a blank line before
    if ev.type == "oops":
        release = e.release
        out += [
            "",
            "racing tasks (crash dump"
            + (f" of the modelled {release} kernel" if release else "")
            + ", innermost frame first):",
        ]
        for t in e.tasks:
            out.append(f'PID: {t.pid}  COMMAND: "{t.comm}"')
            for i, fn in enumerate(reversed(t.chain)):
                out.append(f" #{i} {fn}")
    elif ev.type == "recursive_locking":
        held = e.detail.held_chain
        out += [
            "held since (model call chain, innermost first):",
            *(f" {fn}" for fn in reversed(held)),
        ]
    return out


def render_daemons(r: Report) -> list[str]:
    out = []
    for view in r.daemons.values():
        reqs = view.inflight()
        alive = "alive" if view.alive else "gone" if view.alive is False else "unknown"
        out.append(
            f"FUSE connection {view.conn} at {view.mountpoint} ({view.fsname}): "
            f"waiting={r.waiting.get(view.conn, '?')}, daemon {view.name()} ({alive}"
            + (f", found by {view.how}" if view.how else "")
            + ")"
        )
        if view.error:
            out.append(f"  state not readable: {view.error}")
        if view.state is not None:
            out.append(f"  {len(reqs)} request{'s' if len(reqs) != 1 else ''} in flight:")
            for q in reqs:
                out.append(
                    f"   #{q.id} {q.op}"
                    + (f' "{q.name}"' if q.name else "")
                    + (f" ino {q.ino}" if q.ino is not None else "")
                    + f" from {_who(q.task)}"
                    + (f", {q.age:.2f} s" if q.age is not None else "")
                    + (f", worker {q.worker}" if q.worker else "")
                )
            locks = view.snapshot.locks
            if locks:
                out.append(
                    f"  {len(locks)} modelled lock{'s' if len(locks) != 1 else ''} held or awaited:"
                )
            for lock in locks:
                hs = ", ".join(f"{_who(h.task)} {h.mode}" for h in lock.holders)
                ws = ", ".join(f"{_who(w.task)} {w.mode}" for w in lock.waiters)
                out.append(
                    f"   {lock.name} {lock.key} {lock.desc}: held by [{hs}] waited for by [{ws}]"
                )
            # a completion held by a task (autofs4's wait queue): modelled, as the locks are
            comps = view.snapshot.completions
            if comps:
                out.append(
                    f"  {len(comps)} modelled wait queue{'s' if len(comps) != 1 else ''} "
                    "(completions held by a task):"
                )
            for c in comps:
                ws = ", ".join(_who(w.task) for w in c.waiters)
                out.append(
                    f"   {c.name} {c.key} {c.desc}: to be completed "
                    f"by {_who(c.holder)}, waited for by [{ws}]"
                )
    return out


def _who(task: TaskRef | None) -> str:
    """``comm/pid`` of a task the model names (``?/?`` when it names none)."""
    return task.name() if task is not None else "?/?"


def render_text(r: Report) -> str:
    """report.txt: :mod:`kernfmt`'s records without the tag, each block followed by the
    testbed's own evidence lines."""
    data = findings.parse(r.findings())
    ident = kernfmt.kernel_ident()
    hung_tids = {h.task.tid for h in r.hangs}
    out = [f"stackfs watchdog: {r.verdict}: {r.summary}", ""]
    for h, hj in zip(r.hangs, data.hangs, strict=True):
        out += _texts(kernfmt.blocked_task(data, hj, ident, hung_tids))
        out += render_evidence(h, r.graph)
        out.append("")
    for h in r.slow + r.also_blocked:
        out += render_blocked(h) + render_evidence(h, r.graph)
        out.append("")
    if r.hangs or r.cycle:
        out += render_locks_held(data)
    events = list(r.events)
    if r.cycle is not None:
        same = _model_event_of(r, r.cycle)
        if same is not None:  # the model's own lockdep report says it with its call chains
            events.remove(same)
            out += render_event(same, ident)
            if r.graph is not None:
                out += [""] + _cycle_path(r.graph, r.cycle)
        else:
            out += render_cycle(r, r.cycle, data, ident)
    for c in r.cycles:
        if c is not r.cycle:
            out += ["", f"another cycle: {c.title}", f"  {c.summary}"]
    for ev in events:
        out += render_event(ev, ident)
    if r.errors:
        out += ["", "unexpected errors reported by the workload:"]
        out += [f"  {e.render()}" for e in r.errors]
    daemons = render_daemons(r)
    if daemons:
        out += ["", "connections and daemons:"] + [f" {x}" for x in daemons]
    if r.graph is not None and r.graph.edges and (r.hangs or r.cycle or r.slow):
        out += ["", "wait-for graph" + (" (no cycle):" if r.cycle is None else ":")]
        for e in r.graph.edges:
            if e.kind == "context":
                continue
            out.append(
                f"  {short(r.graph, e.src)} -> {e.label}"
                f"{' (inferred)' if e.inferred else ''} -> {short(r.graph, e.dst)}"
            )
    t = r.timing
    if t.get("latency") is not None:
        out += [
            "",
            f"detected {t['latency']:.3f} s after "
            f"{t.get('latency_from', 'the hang began')} "
            f"(threshold {r.threshold:g} s, report at {_clock(t.get('detected'))})",
        ]
    if r.recovery is not None:
        out += [""] + r.recovery.render()
    if r.files:
        out += ["", "files: " + ", ".join(f"{k}={v}" for k, v in sorted(r.files.items()))]
    for n in r.notes:
        out.append(f"note: {n}")
    return "\n".join(out)
