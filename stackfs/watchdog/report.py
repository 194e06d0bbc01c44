"""The watchdog's report in three forms: kernel-style text, JSON, and a picture of the graph.

The text reads like the kernel's own messages:

* ``INFO: task stat:2861 blocked for more than 1 seconds.`` with the task line and the
  ``Call Trace`` from ``/proc/TID/stack`` (kernel/hung_task.c, ``sched_show_task``), followed
  by what the kernel cannot say: the FUSE connection, its ``waiting`` count, the daemon and the
  request it is serving;
* ``Showing all locks held in the system:`` (``debug_show_all_locks``) from the modelled locks
  and the i_rwsem holds inferred from stacks;
* for a cycle, lockdep's "possible circular locking dependency detected" (or "possible
  recursive locking detected" for one task) with the "Possible unsafe locking scenario" table,
  one column per task (kernel/locking/lockdep.c, ``print_circular_lock_scenario``);
* for an oops, the ``kernel BUG at ...`` block and every racing task's call chain in the form of
  the crash dump of seed 003.

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

from stackfs.watchdog.daemons import DaemonView
from stackfs.watchdog.detect import Hang, ModelEvent, WorkloadError
from stackfs.watchdog.escape import path_text, printable, printable_json
from stackfs.watchdog.graph import Cycle, Segment, WaitGraph, short
from stackfs.watchdog.picture import write_picture
from stackfs.watchdog.procscan import TaskInfo

RULE_CIRC = "=" * 54
RULE_CIRC2 = "-" * 54
RULE_REC = "=" * 44
RULE_REC2 = "-" * 44


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
            conns = {c for n in nodes if isinstance(c := g.nodes[n].attrs.get("conn"), int)}
            tasks = {t for n in nodes if isinstance(t := g.nodes[n].attrs.get("tid"), int)}
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
                c = n.attrs.get("conn")
                if isinstance(c, int):
                    conns.add(c)
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
        return printable_json(self._json())

    def _json(self) -> dict[str, Any]:
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
            "text": self.text(),
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


def lock_class(is_dir: bool | None) -> str:
    """The lockdep class of an inode's i_rwsem (``lockdep_annotate_inode_mutex_key``)."""
    return "&type->i_mutex_dir_key" if is_dir else "&sb->s_type->i_mutex_key"


def lock_name(g: WaitGraph | None, nid: str | None) -> str:
    """How the scenario table names a lock node."""
    if g is None or nid is None or nid not in g.nodes:
        return "?"
    n = g.nodes[nid]
    if n.kind == "klock":
        return f"{lock_class(n.attrs.get('is_dir'))} {n.attrs.get('path')}"
    desc = n.attrs.get("desc")
    return f"{n.attrs.get('ident')}" + (f" {desc}" if desc else "")


def _task_name(g: WaitGraph | None, tid: int) -> str:
    if g is not None and tid in g.tasks:
        return g.tasks[tid].name()
    if g is not None and f"task:{tid}" in g.nodes:
        return f"{g.nodes[f'task:{tid}'].attrs.get('comm', '?')}/{tid}"
    return f"?/{tid}"


def render_hang(
    h: Hang, threshold: float, hung: bool = True, g: WaitGraph | None = None
) -> list[str]:
    t = h.task
    lim = f"{threshold:g}"
    if h.slow:
        out = [
            f"task {t.comm}:{t.tid} blocked for {h.blocked_for:.2f} seconds: slow, not hung "
            "(the daemon is serving its request; no hung-task report):"
        ]
    elif hung:
        out = [
            f"INFO: task {t.comm}:{t.tid} blocked for more than {lim} seconds.",
            f"      Not tainted {os.uname().release} (stackfs watchdog)",
            f'"stackfs watch --threshold {lim}" sets this limit '
            "(the kernel's own: /proc/sys/kernel/hung_task_timeout_secs).",
        ]
    else:
        out = [
            f"task {t.comm}:{t.tid} blocked for {h.blocked_for:.2f} seconds "
            "(under the threshold so far; it is part of the wait-for graph):"
        ]
    out += [
        f"task:{t.comm:<15.15} state:{t.state} pid:{t.tid:<5d} tgid:{t.pid:<5d} "
        f"ppid:{t.ppid:<6d} wchan:{t.wchan or '?'}",
        "Call Trace:",
        " <TASK>",
        *(f" {line}" for line in t.stack),
        " </TASK>",
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
        d = h.daemon or {}
        who = (
            f"daemon {d.get('comm') or '?'}/{d.get('pid')}"
            + (" (alive)" if d.get("alive") else " (gone)" if d.get("alive") is False else "")
            if d.get("pid")
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
    if r:
        worker = (r.get("worker") or {}).get("tid")
        age = r.get("age")
        out.append(
            f" request: #{r.get('id')} {r.get('op')}"
            + (f' "{path_text(r["name"])}"' if r.get("name") else "")
            + (f" (ino {r.get('ino')})" if r.get("ino") is not None else "")
            + (f", in flight {age:.2f} s" if isinstance(age, (int, float)) else "")
            + (f", served by worker thread {worker}" if worker else "")
            + ("" if r.get("task") else ", caller paired by opcode (the request has no pid)")
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


def render_locks_held(r: Report) -> list[str]:
    """``Showing all locks held in the system:``, modelled and inferred."""
    held: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for view in r.daemons.values():
        for lock in (view.state or {}).get("locks") or []:
            ident = f"{lock.get('name', 'lock')} {lock.get('key', '?')}"
            for h in lock.get("holders") or []:
                task = h.get("task") or {}
                pid = task.get("pid")
                if not isinstance(pid, int):
                    continue
                names[pid] = f"{task.get('comm', '?')}/{pid}"
                chain = h.get("chain") or []
                held.setdefault(pid, []).append(
                    f"({ident}){{{'+.+.' if h.get('mode') == 'write' else '.+.+'}}}, at: "
                    f"{chain[-1] if chain else '?'}  [{lock.get('desc') or ''}, "
                    f"{h.get('mode')}, model of {view.fsname}]"
                )
    g = r.graph
    if g is not None:
        for e in g.edges:
            if e.kind != "held_by" or not e.inferred:
                continue
            n = g.nodes[e.src]
            tid = g.nodes[e.dst].attrs.get("tid")
            if not isinstance(tid, int):
                continue
            names[tid] = _task_name(g, tid)
            mode = e.attrs.get("mode")
            held.setdefault(tid, []).append(
                f"({lock_class(n.attrs.get('is_dir'))}){{{'+.+.' if mode == 'write' else '.+.+'}}}"
                f", at: {e.attrs.get('at')}  [{n.attrs.get('path')}, {mode}, inferred from the "
                "kernel stack]"
            )
    out = ["", "Showing all locks held in the system:"]
    if not held:
        out.append("(no lock holder known)")
    for pid, locks in held.items():
        count = len(locks)
        out.append(f"{count} lock{'s' if count != 1 else ''} held by {names[pid]}:")
        out.extend(f" #{i}: {line}" for i, line in enumerate(locks))
    out += ["", "============================================="]
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
            req = (g.nodes[s.request].attrs.get("request") or {}) if s.request in g.nodes else {}
            what = f"{req.get('op', '?')}" + (f' "{req.get("name")}"' if req.get("name") else "")
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


def render_cycle(r: Report, cycle: Cycle) -> list[str]:
    g = r.graph
    assert g is not None
    if cycle.kind == "recursive_locking" and cycle.segments:
        s = cycle.segments[0]
        name = _task_name(g, s.waiter)
        lname = lock_name(g, s.lock)
        out = [
            "",
            RULE_REC,
            "WARNING: possible recursive locking detected",
            f"{os.uname().release} (stackfs watchdog: a cycle in the wait-for graph)",
            RULE_REC2,
            f"{name} is trying to acquire lock:",
            f" ({lname}), at: {s.wait_at or '?'}",
            "",
            "but task is already holding lock:",
            f" ({lname}), at: {s.hold_at or '?'}",
            "",
        ]
        if s.request:
            out += [
                f"(the new attempt is made for it by the daemon serving {short(g, s.request)})",
                "",
            ]
        out += [
            "other info that might help us debug this:",
            " Possible unsafe locking scenario:",
            "",
            "       CPU0",
            "       ----",
            f"       {name}",
            f"  lock({lname});",
            f"  lock({lname});",
            "",
            " *** DEADLOCK ***",
            "",
            " May be due to missing lock nesting notation",
            "",
        ]
        out += _cycle_path(g, cycle)
        return out
    header = (
        "WARNING: possible circular locking dependency detected"
        if cycle.kind == "lock_inversion"
        else f"WARNING: deadlock: {cycle.title}"
    )
    out = [
        "",
        RULE_CIRC,
        header,
        f"{os.uname().release} (stackfs watchdog: a cycle in the wait-for graph)",
        RULE_CIRC2,
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
                f" ({short(g, comp.id)}), at: {s.wait_at or '?'}",
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
            dpid = node.attrs.get("daemon") if node else None
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
        tasks = ev.event.get("tasks") or [{}]
        if (
            ev.type == "recursive_locking"
            and ev.daemon_pid == node.attrs.get("daemon")
            and (ev.event.get("detail") or {}).get("lock") == node.attrs.get("ident")
            and tasks[0].get("pid") == seg.waiter
        ):
            return ev
    return None


def _cycle_path(g: WaitGraph, cycle: Cycle) -> list[str]:
    out = ["the wait-for cycle:", f"  {short(g, cycle.nodes[0])}"]
    for e in cycle.edges:
        out.append(f"    -> {e.label}{' (inferred)' if e.inferred else ''} -> {short(g, e.dst)}")
    return out + [""]


def render_event(ev: ModelEvent) -> list[str]:
    e = ev.event
    d = e.get("detail") or {}
    tasks = e.get("tasks") or []
    where = f"[stackfs model: {ev.fsname} on {ev.mountpoint}, {_clock(ev.time)}]"
    if ev.type == "oops":
        lines = list(d.get("lines") or [])
        if not lines:
            lines = [
                "------------[ cut here ]------------",
                d.get("bug") or f"BUG: {e.get('summary')}",
            ]
        out = [
            "",
            *lines,
            where,
            "---[ end trace ]---",
            "",
            "racing tasks (crash dump, innermost frame first):",
        ]
        for t in tasks:
            out.append(f'PID: {t.get("pid")}  COMMAND: "{t.get("comm")}"')
            for i, fn in enumerate(reversed(t.get("chain") or [])):
                out.append(f" #{i} {fn}")
        return out
    if ev.type == "recursive_locking":
        me = tasks[0] if tasks else {}
        lock = d.get("lock", "?")
        desc = d.get("desc") or ""
        chain = d.get("chain") or me.get("chain") or []
        hchain = d.get("held_chain") or []
        name = f"{me.get('comm', '?')}/{me.get('pid', '?')}"
        return [
            "",
            RULE_REC,
            "WARNING: possible recursive locking detected",
            where,
            RULE_REC2,
            f"{name} is trying to acquire lock:",
            f" ({lock}) {desc}, at: {chain[-1] if chain else '?'} [{d.get('mode', '?')}]",
            "",
            "but task is already holding lock:",
            f" ({lock}) {desc}, at: {hchain[-1] if hchain else '?'} [{d.get('held_mode', '?')}]",
            "",
            "other info that might help us debug this:",
            " Possible unsafe locking scenario:",
            "",
            "       CPU0",
            "       ----",
            f"       {name}",
            f"  {'r' if d.get('held_mode') == 'read' else ''}lock({lock});",
            f"  {'r' if d.get('mode') == 'read' else ''}lock({lock});",
            "",
            " *** DEADLOCK ***" if d.get("blocks", True) else " (no deadlock: shared twice)",
            "",
            " May be due to missing lock nesting notation",
            "",
            "stack backtrace (model call chain, innermost first):",
            *(f" {fn}" for fn in reversed(chain)),
            "held since (model call chain):",
            *(f" {fn}" for fn in reversed(hchain)),
        ]
    if ev.type == "lock_inversion":
        new = d.get("new") or {}
        existing = d.get("existing") or []
        me = tasks[0] if tasks else {}
        name = f"{me.get('comm', '?')}/{me.get('pid', '?')}"
        out = [
            "",
            RULE_CIRC,
            "WARNING: possible circular locking dependency detected",
            where,
            RULE_CIRC2,
            f"{name} is trying to acquire lock:",
            f" ({new.get('then', '?')}), at: {(new.get('chain') or ['?'])[-1]}",
            "",
            "but task is already holding lock:",
            f" ({new.get('first', '?')}), at: {(new.get('first_chain') or ['?'])[-1]}",
            "",
            "which lock already depends on the new lock.",
            "",
            "the existing dependency chain (in reverse order) is:",
            "",
        ]
        for i, dep in enumerate(reversed(existing)):
            out.append(
                f"-> #{len(existing) - 1 - i} ({dep.get('then', '?')}) "
                f"[{(dep.get('task') or {}).get('comm', '?')}/"
                f"{(dep.get('task') or {}).get('pid', '?')}]:"
            )
            out.extend(f"       {fn}" for fn in reversed(dep.get("chain") or []))
            out.append("")
        out += ["other info that might help us debug this:", ""]
        out += list(d.get("scenario") or [])
        return out
    return ["", f"stackfs: {ev.type}: {e.get('summary', '')} {where}"]


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
                task = q.get("task") or {}
                worker = (q.get("worker") or {}).get("tid")
                age = q.get("age")
                out.append(
                    f"   #{q.get('id')} {q.get('op')}"
                    + (f' "{q.get("name")}"' if q.get("name") else "")
                    + (f" ino {q.get('ino')}" if q.get("ino") is not None else "")
                    + f" from {task.get('comm', '?')}/{task.get('pid', '?')}"
                    + (f", {age:.2f} s" if isinstance(age, (int, float)) else "")
                    + (f", worker {worker}" if worker else "")
                )
            locks = (view.state or {}).get("locks") or []
            if locks:
                out.append(
                    f"  {len(locks)} modelled lock{'s' if len(locks) != 1 else ''} held or awaited:"
                )
            for lock in locks:
                hs = ", ".join(
                    f"{(h.get('task') or {}).get('comm')}/"
                    f"{(h.get('task') or {}).get('pid')} {h.get('mode')}"
                    for h in lock.get("holders") or []
                )
                ws = ", ".join(
                    f"{(w.get('task') or {}).get('comm')}/"
                    f"{(w.get('task') or {}).get('pid')} {w.get('mode')}"
                    for w in lock.get("waiters") or []
                )
                out.append(
                    f"   {lock.get('name')} {lock.get('key')} {lock.get('desc') or ''}: "
                    f"held by [{hs}] waited for by [{ws}]"
                )
    return out


def render_text(r: Report) -> str:
    out = [f"stackfs watchdog: {r.verdict}: {r.summary}", ""]
    for h in r.hangs:
        out += render_hang(h, r.threshold, g=r.graph)
        out.append("")
    for h in r.slow:
        out += render_hang(h, r.threshold, hung=False, g=r.graph)
        out.append("")
    for h in r.also_blocked:
        out += render_hang(h, r.threshold, hung=False, g=r.graph)
        out.append("")
    if r.hangs or r.cycle:
        out += render_locks_held(r)
    events = list(r.events)
    if r.cycle is not None:
        same = _model_event_of(r, r.cycle)
        if same is not None:  # the model's own lockdep report says it with its call chains
            events.remove(same)
            out += render_event(same)
            if r.graph is not None:
                out += [""] + _cycle_path(r.graph, r.cycle)
        else:
            out += render_cycle(r, r.cycle)
    for c in r.cycles:
        if c is not r.cycle:
            out += ["", f"another cycle: {c.title}", f"  {c.summary}"]
    for ev in events:
        out += render_event(ev)
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
