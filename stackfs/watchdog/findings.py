"""A watchdog report's findings, typed: what :mod:`stackfs.watchdog.kernfmt` renders.

The report's JSON form (:meth:`stackfs.watchdog.report.Report.findings`, saved as
``report.json``) is parsed here once, whether it comes from a live report or from a file, into
the graph's own :class:`~stackfs.watchdog.graph.Node` / :class:`~stackfs.watchdog.graph.Edge` /
:class:`~stackfs.watchdog.graph.Segment` (typed attributes: :mod:`stackfs.watchdog.graphattrs`),
the models' snapshot types (:mod:`stackfs.kernel.snapshot`: events, modelled locks) and the
tasks as /proc showed them (:class:`ProcTask`). A file is someone's input: every field is
checked for its type, one of the wrong type reads as absent, nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stackfs.kernel import snapshot
from stackfs.kernel.snapshot import EventSnap, LockSnap, as_dict, as_int, as_list, as_str
from stackfs.watchdog.graph import Edge, Node, Segment
from stackfs.watchdog.graphattrs import EdgeAttrs, NodeAttrs


@dataclass(frozen=True, slots=True)
class ProcTask:
    """A task as /proc showed it (``TaskInfo.to_json``; what a graph's task node keeps)."""

    tid: int | None
    pid: int | None
    comm: str | None
    state: str | None
    ppid: int | None = None
    #: ``/proc/TID/stat`` field 9 (``task_flags``)
    flags: int | None = None
    stack: tuple[str, ...] = ()

    @classmethod
    def parse(cls, d: object) -> ProcTask:
        t = as_dict(d)
        return cls(
            as_int(t.get("tid")),
            as_int(t.get("pid")),
            as_str(t.get("comm")),
            as_str(t.get("state")),
            as_int(t.get("ppid")),
            as_int(t.get("flags")),
            tuple(str(s) for s in as_list(t.get("stack"))),
        )

    @classmethod
    def of_node(cls, a: NodeAttrs) -> ProcTask:
        return cls(a.tid, a.pid, a.comm, a.state)


@dataclass(frozen=True, slots=True)
class HangFinding:
    """A task blocked past the threshold (``Hang.to_json``)."""

    task: ProcTask
    blocked_for: float

    @classmethod
    def parse(cls, d: object) -> HangFinding:
        h = as_dict(d)
        b = h.get("blocked_for")
        return cls(
            ProcTask.parse(h.get("task")),
            float(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else 0.0,
        )


@dataclass(frozen=True, slots=True)
class CycleFinding:
    """The report's cycle (``Cycle.to_json``): its kind and its task-to-task segments."""

    kind: str | None
    segments: tuple[Segment, ...]


def _segment(d: object) -> Segment:
    s = as_dict(d)

    def tid(k: str) -> int:
        v = as_int(s.get(k))
        return v if v is not None else -1

    return Segment(
        tid("waiter"),
        tid("holder"),
        as_str(s.get("request")),
        as_str(s.get("lock")),
        as_str(s.get("wait_mode")),
        as_str(s.get("hold_mode")),
        as_str(s.get("wait_at")),
        as_str(s.get("hold_at")),
    )


def _node(d: object) -> Node:
    n = as_dict(d)
    return Node(
        str(n.get("id", "?")),
        str(n.get("kind", "?")),
        str(n.get("label", "")),
        NodeAttrs.parse(n.get("attrs")),
    )


def _edge(d: object) -> Edge:
    e = as_dict(d)
    return Edge(
        str(e.get("src", "?")),
        str(e.get("dst", "?")),
        str(e.get("kind", "?")),
        str(e.get("label", "")),
        e.get("inferred") is True,
        EdgeAttrs.parse(e.get("attrs")),
    )


@dataclass(frozen=True)
class Findings:
    """What :mod:`stackfs.watchdog.kernfmt` renders of a report."""

    hangs: tuple[HangFinding, ...] = ()
    also_blocked: tuple[HangFinding, ...] = ()
    #: the blocked tasks of the scan
    blocked: tuple[ProcTask, ...] = ()
    #: the wait-for graph: its nodes by id, its edges without the ``context`` ones
    nodes: Mapping[str, Node] = field(default_factory=dict)
    edges: tuple[Edge, ...] = ()
    cycle: CycleFinding | None = None
    events: tuple[EventSnap, ...] = ()
    #: every modelled lock the daemons' states hold, daemon after daemon
    locks: tuple[LockSnap, ...] = ()

    def task(self, tid: int) -> ProcTask | None:
        """Task ``tid`` as the report has it: a blocked task's /proc view, else its node's."""
        for h in self.hangs + self.also_blocked:
            if h.task.tid == tid:
                return h.task
        for t in self.blocked:
            if t.tid == tid:
                return t
        node = self.nodes.get(f"task:{tid}")
        return ProcTask.of_node(node.attrs) if node is not None else None


def parse(report: object) -> Findings:
    """A report's JSON form (a live report's :meth:`~stackfs.watchdog.report.Report.findings`
    or a saved ``report.json``), typed."""
    r = as_dict(report)
    graph = as_dict(r.get("graph"))
    nodes = [_node(n) for n in as_list(graph.get("nodes"))]
    cycle = as_dict(r.get("cycle"))
    return Findings(
        hangs=tuple(HangFinding.parse(h) for h in as_list(r.get("hangs"))),
        also_blocked=tuple(HangFinding.parse(h) for h in as_list(r.get("also_blocked"))),
        blocked=tuple(ProcTask.parse(t) for t in as_list(r.get("blocked")) if isinstance(t, dict)),
        nodes={n.id: n for n in nodes},
        edges=tuple(
            e for e in (_edge(x) for x in as_list(graph.get("edges"))) if e.kind != "context"
        ),
        cycle=(
            CycleFinding(
                as_str(cycle.get("kind")),
                tuple(_segment(s) for s in as_list(cycle.get("segments"))),
            )
            if cycle
            else None
        ),
        events=tuple(
            EventSnap.parse(e) for e in as_list(r.get("events")) if isinstance(e, Mapping)
        ),
        locks=tuple(
            lock
            for view in as_dict(r.get("daemons")).values()
            for lock in snapshot.parse(as_dict(view).get("state")).locks
        ),
    )
