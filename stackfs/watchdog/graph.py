"""The wait-for graph: who waits for whom, across processes, mounts, daemons and locks.

Nodes are tasks (real threads from /proc), FUSE requests (a testbed daemon's in-flight
requests; for a foreign mount, the connection), daemons, modelled locks (from a daemon's state)
and real kernel locks inferred from stacks (:mod:`stackfs.watchdog.kernlocks`). Edges::

    task  --fuse_wait-->  request        the task sleeps in request_wait_answer for this request
    task  --fuse_wait-->  conn           ... on a connection whose daemon we cannot see inside
    request --served_by--> task          the daemon serves it in a worker thread (in_worker)
    request --lock_wait--> lock          its handler waits for a modelled lock (a waiter's task
                                          is the request's task)
    request --barrier-->  inject         its handler is held at an injection barrier
    request --completion_wait--> completion  its handler waits for a completion (autofs4_wait)
    completion --held_by--> task         the task that is to complete it (the automount
                                          daemon's thread: a process that serves no mount)
    request --handler-->  daemon         none of the above: the daemon has not answered
    conn  --served_by-->  daemon
    task  --lock_wait-->  klock          asleep in down_write/down_read of an i_rwsem
    lock | klock --held_by--> task       the holder

A worker thread is a task like any other: when it sleeps in a FUSE wait on a lower mount, its
own ``fuse_wait`` edge leads into the lower daemon, whose request's task is that tid. This is how
a chain crosses layers. A cycle in this graph is a deadlock; :func:`cycles` finds them and
:class:`Cycle` names one ("fuse_reentry", "recursive_locking", "lock_inversion").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from stackfs.kernel.snapshot import (
    CompletionSnap,
    LockHold,
    LockSnap,
    RequestSnap,
    TaskRef,
)
from stackfs.watchdog import kernlocks
from stackfs.watchdog.daemons import DaemonView, ServiceView
from stackfs.watchdog.escape import path_text
from stackfs.watchdog.graphattrs import EdgeAttrs, NodeAttrs
from stackfs.watchdog.procscan import Scanner, TaskInfo

MAX_CYCLES = 16


@dataclass
class Node:
    id: str
    kind: str  # task | request | conn | daemon | lock | klock | inject | completion
    label: str
    attrs: NodeAttrs = field(default_factory=NodeAttrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "attrs": self.attrs.to_json(),
        }


@dataclass
class Edge:
    src: str
    dst: str
    kind: str  # fuse_wait | served_by | lock_wait | held_by | barrier | handler
    label: str
    inferred: bool = False
    attrs: EdgeAttrs = field(default_factory=EdgeAttrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "kind": self.kind,
            "label": self.label,
            "inferred": self.inferred,
            "attrs": self.attrs.to_json(),
        }


@dataclass
class Segment:
    """One step of a cycle from a waiting task to the task it waits for."""

    waiter: int
    holder: int
    request: str | None = None  # node id of the FUSE request on the way, if any
    lock: str | None = None  # node id of the lock on the way, if any
    wait_mode: str | None = None
    hold_mode: str | None = None
    wait_at: str | None = None
    hold_at: str | None = None


@dataclass
class Cycle:
    """A cycle in the wait-for graph: a deadlock."""

    nodes: list[str]
    edges: list[Edge]
    kind: str
    title: str
    summary: str
    tasks: list[int]
    segments: list[Segment]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "summary": self.summary,
            "nodes": self.nodes,
            "edges": [e.to_json() for e in self.edges],
            "tasks": self.tasks,
            "segments": [s.__dict__ for s in self.segments],
        }


class WaitGraph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.tasks: dict[int, TaskInfo] = {}
        self.daemons: dict[int, DaemonView] = {}
        #: service daemons (no mount: a lock manager), by pid
        self.services: dict[int, ServiceView] = {}

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def link(self, edge: Edge) -> None:
        if not any(
            e.src == edge.src and e.dst == edge.dst and e.kind == edge.kind for e in self.edges
        ):
            self.edges.append(edge)

    def out(self, nid: str, context: bool = False) -> list[Edge]:
        """Edges leaving ``nid`` (the ``context`` ones, e.g. request -> its daemon, if asked)."""
        return [e for e in self.edges if e.src == nid and (context or e.kind != "context")]

    def edge(self, src: str, dst: str) -> Edge | None:
        for e in self.edges:
            if e.src == src and e.dst == dst and e.kind != "context":
                return e
        return None

    def cycles(self) -> list[list[str]]:
        """Elementary cycles (each once, starting at its smallest node), at most MAX_CYCLES."""
        order = sorted(self.nodes)
        index = {n: i for i, n in enumerate(order)}
        succ: dict[str, list[str]] = {n: [] for n in order}
        for e in self.edges:
            if e.kind == "context" or e.dst in succ[e.src]:
                continue
            succ[e.src].append(e.dst)
        found: list[list[str]] = []
        for start in order:
            stack = [(start, iter(succ[start]))]
            path = [start]
            on_path = {start}
            while stack and len(found) < MAX_CYCLES:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    on_path.discard(path.pop())
                    continue
                if nxt == start:
                    found.append(list(path))
                elif index[nxt] > index[start] and nxt not in on_path:
                    path.append(nxt)
                    on_path.add(nxt)
                    stack.append((nxt, iter(succ[nxt])))
        return found

    def reachable(self, roots: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [r for r in roots if r in self.nodes]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(e.dst for e in self.out(n, context=True))
        return seen

    def component(self, seeds: list[str]) -> set[str]:
        """The nodes weakly connected to ``seeds`` (edges followed both ways)."""
        adj: dict[str, set[str]] = {}
        for e in self.edges:
            adj.setdefault(e.src, set()).add(e.dst)
            adj.setdefault(e.dst, set()).add(e.src)
        seen: set[str] = set()
        todo = [s for s in seeds if s in self.nodes]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(adj.get(n, ()))
        return seen

    def keep_component(self, seeds: list[str]) -> None:
        """Keep the weakly connected component(s) of ``seeds`` (drop unrelated waits)."""
        keep = self.component(seeds)
        self.nodes = {k: v for k, v in self.nodes.items() if k in keep}
        self.edges = [e for e in self.edges if e.src in keep and e.dst in keep]

    def prune(self, roots: list[str]) -> None:
        """Keep only what the roots (the blocked tasks) lead to."""
        keep = self.reachable(roots)
        self.nodes = {k: v for k, v in self.nodes.items() if k in keep}
        self.edges = [e for e in self.edges if e.src in keep and e.dst in keep]

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_json() for n in self.nodes.values()],
            "edges": [e.to_json() for e in self.edges],
        }


# -- building ---------------------------------------------------------------------------------


def task_id(tid: int) -> str:
    return f"task:{tid}"


def _task_node(g: WaitGraph, t: TaskInfo) -> str:
    g.tasks.setdefault(t.tid, t)
    nid = task_id(t.tid)
    what = t.syscall.render() if t.syscall else ""
    g.add(
        Node(
            nid,
            "task",
            f"{t.comm}/{t.tid}\n{t.state} {t.wchan}" + (f"\n{what}" if what else ""),
            NodeAttrs.task(t.tid, t.pid, t.comm, t.state, t.wchan),
        )
    )
    return nid


def _request_label(req: RequestSnap) -> str:
    op = req.op or "?"
    what = f'{op} "{path_text(req.name)}"' if req.name else op
    return what + (f" (ino {req.ino})" if req.ino is not None else "")


def request_of(node: Node) -> RequestSnap:
    """The FUSE request a ``request`` node stands for (its wire form is in the node's attrs)."""
    return node.attrs.request or RequestSnap.parse({})


def build(
    tasks: dict[int, TaskInfo],
    daemons: dict[int, DaemonView],
    scanner: Scanner,
    waiting: dict[int, int] | None = None,
    services: dict[int, ServiceView] | None = None,
) -> WaitGraph:
    """Join blocked ``tasks``, the ``daemons`` (conn -> view) and their states into a graph;
    ``services`` (:func:`stackfs.watchdog.daemons.services`) name the lock managers."""
    g = WaitGraph()
    g.daemons = daemons
    g.services = services or {}
    waiting = waiting or {}
    tasks = dict(tasks)

    # every in-flight request of every testbed daemon, by the tid of its task
    by_task: dict[int, tuple[DaemonView, RequestSnap]] = {}
    for view in daemons.values():
        for req in view.inflight():
            if req.pid is not None:
                by_task[req.pid] = (view, req)

    paired = _pair_unattributed(tasks, daemons, by_task)

    def lookup_name(t: TaskInfo) -> str | None:
        hit = by_task.get(t.tid)
        if hit and hit[1].op == "lookup":
            return hit[1].name
        return None

    def ensure_task(tid: int) -> str | None:
        if tid not in tasks:
            t = scanner.read_task(tid)
            if t is None:
                return None
            tasks[tid] = t
        return _task_node(g, tasks[tid])

    def request_node(view: DaemonView, req: RequestSnap) -> str:
        nid = f"req:{view.pid}:{req.id}"
        if nid in g.nodes:
            return nid
        g.add(
            Node(
                nid,
                "request",
                f"FUSE {_request_label(req)}\nreq #{req.id}"
                + (f", {req.age:.2f} s" if req.age is not None else "")
                + f"\nconn {view.conn} daemon {view.name()}",
                NodeAttrs.for_request(view.pid, view.conn, view.mountpoint, req),
            )
        )
        _request_edges(g, view, req, nid, ensure_task)
        return nid

    # 1. FUSE waits: task -> request (testbed) or -> connection (foreign); ``waiting`` covers
    #    every connection of the machine, so "the only one waiting" is a safe guess
    only_waiting = [c for c, n in waiting.items() if n]
    for t in list(tasks.values()):
        _task_node(g, t)
    for tid in list(tasks):
        t = tasks[tid]
        if not t.fuse_wait:
            hit = by_task.get(tid)
            if hit is not None and page_fault_wait(t, hit[1]):
                view, req = hit
                t.mountpoint, t.conn, t.fsname = view.mountpoint, view.conn, view.fsname
                t.conn_how = "the FUSE READ carrying its pid"
                at = next(f for f in FOLIO_WAITS if f in t.frames)
                what = "page fault" if at == "filemap_fault" else "read"
                g.link(
                    Edge(
                        task_id(tid),
                        request_node(view, req),
                        "fuse_wait",
                        f"{what} waits for the READ ({at}, folio locked)",
                        attrs=EdgeAttrs.folio(at),
                    )
                )
            continue
        hit = by_task.get(tid)
        if hit is not None and (t.conn is None or t.conn == hit[0].conn):
            view, req = hit
            if t.conn is None:
                t.mountpoint, t.conn, t.fsname = view.mountpoint, view.conn, view.fsname
                t.conn_how = "daemon request"
            g.link(
                Edge(
                    task_id(tid),
                    request_node(view, req),
                    "fuse_wait",
                    f"waits for reply ({t.fuse_op or 'fuse'})",
                )
            )
            continue
        pair = paired.get(tid)
        if pair is not None:
            view, req, among = pair
            g.link(
                Edge(
                    task_id(tid),
                    request_node(view, req),
                    "fuse_wait",
                    f"waits for reply ({t.fuse_op or 'fuse'})",
                    inferred=True,
                    attrs=EdgeAttrs.paired(among),
                )
            )
            continue
        if t.conn is None and len(only_waiting) == 1:
            t.conn, t.conn_how = only_waiting[0], "only waiting connection"
            only = daemons.get(t.conn)
            if only is not None:
                t.mountpoint, t.fsname = only.mountpoint, only.fsname
        cid = _conn_node(g, t.conn, daemons.get(t.conn) if t.conn is not None else None, waiting)
        g.link(
            Edge(
                task_id(tid),
                cid,
                "fuse_wait",
                f"waits for reply ({t.fuse_op or 'fuse'})" + _unread_note(t, daemons, waiting),
            )
        )

    # 3. real kernel locks inferred from stacks
    klocks: dict[kernlocks.KLock, str] = {}
    holders: list[tuple[TaskInfo, kernlocks.KLockUse]] = []
    for t in list(tasks.values()):
        for use in kernlocks.holds(t, lookup_name(t)):
            holders.append((t, use))
    for t in list(tasks.values()):
        for use in kernlocks.waits_for(t, lookup_name(t)):
            lid = klocks.get(use.lock)
            if lid is None:
                lid = klocks[use.lock] = f"klock:{use.lock.path}"
                g.add(
                    Node(
                        lid,
                        "klock",
                        f"i_rwsem\n{use.lock.path}\n(kernel, inferred)",
                        NodeAttrs.klock(use.lock.path, use.lock.conn, use.lock.is_dir),
                    )
                )
            g.link(
                Edge(
                    task_id(t.tid),
                    lid,
                    "lock_wait",
                    f"down_{use.mode} in {use.at}",
                    inferred=True,
                    attrs=EdgeAttrs.inferred(use.mode, use.at),
                )
            )
            for h, huse in holders:
                if huse.lock == use.lock and kernlocks.conflicts(use.mode, huse.mode):
                    g.link(
                        Edge(
                            lid,
                            task_id(h.tid),
                            "held_by",
                            f"held {huse.mode} in {huse.at}"
                            + (" (one of its ancestors)" if huse.ambiguous else ""),
                            inferred=True,
                            attrs=EdgeAttrs.inferred(huse.mode, huse.at, huse.ambiguous),
                        )
                    )
    g.prune([task_id(t) for t in tasks if tasks[t].blocked])
    return g


def _pair_unattributed(
    tasks: dict[int, TaskInfo],
    daemons: dict[int, DaemonView],
    by_task: dict[int, tuple[DaemonView, RequestSnap]],
) -> dict[int, tuple[DaemonView, RequestSnap, int]]:
    """tid -> (daemon, request, how many it was chosen among) for the tasks in a FUSE wait
    whose request the daemon holds without knowing its caller (READ, WRITE, FLUSH, ... carry no
    pid: ``task`` null). A task is paired with such a request of its connection and its opcode
    (:attr:`TaskInfo.fuse_opcode`, from its stack), the longest-waiting task with the oldest
    request: an inference, drawn as one."""
    free: dict[tuple[int, str], list[tuple[DaemonView, RequestSnap]]] = {}
    for view in daemons.values():
        for req in sorted(view.inflight(), key=lambda r: r.since or 0.0):
            if req.task is None and req.op is not None:
                free.setdefault((view.conn, req.op), []).append((view, req))
    waiters = [
        t
        for t in tasks.values()
        if t.fuse_wait and t.tid not in by_task and t.conn is not None and t.fuse_opcode
    ]
    out: dict[int, tuple[DaemonView, RequestSnap, int]] = {}
    for t in sorted(waiters, key=lambda t: t.last_ran or 0.0):
        left = free.get((t.conn or 0, t.fuse_opcode or ""))
        if left:
            among = len(left)
            view, req = left.pop(0)
            out[t.tid] = (view, req, among)
    return out


def _unread_note(t: TaskInfo, daemons: dict[int, DaemonView], waiting: dict[int, int]) -> str:
    """What the daemon's in-flight table says of a request that is not in it: unread when the
    connection has more requests (``waiting``: every request not yet answered, read or not)
    than the daemon holds."""
    view = daemons.get(t.conn) if t.conn is not None else None
    if view is None or not view.testbed or view.state is None:
        return ""
    held, n = len(view.inflight()), waiting.get(view.conn)
    if n is not None and n > held:
        return "; the daemon has not read the request"
    return f"; not among the {held} request{'s' if held != 1 else ''} the daemon holds"


def _conn_node(
    g: WaitGraph, conn: int | None, view: DaemonView | None, waiting: dict[int, int]
) -> str:
    cid = f"conn:{conn if conn is not None else '?'}"
    if cid in g.nodes:
        return cid
    if conn is None:
        g.add(
            Node(
                cid,
                "conn",
                "FUSE connection ?\n(not found)",
                NodeAttrs.for_conn(None, "?", None, None),
            )
        )
        return cid
    mp = view.mountpoint if view else "?"
    g.add(
        Node(
            cid,
            "conn",
            f"FUSE conn {conn}\n{mp}\nwaiting {waiting.get(conn, '?')}",
            NodeAttrs.for_conn(conn, mp, waiting.get(conn), view.fsname if view else None),
        )
    )
    if view is not None:
        did = _daemon_node(g, view)
        g.link(
            Edge(cid, did, "served_by", "served by" if view.alive is not False else "daemon gone")
        )
    return cid


def _daemon_node(g: WaitGraph, view: DaemonView) -> str:
    did = f"daemon:{view.pid if view.pid else 'conn' + str(view.conn)}"
    status = "alive" if view.alive else "dead" if view.alive is False else "unknown"
    g.add(
        Node(
            did,
            "daemon",
            f"daemon {view.name()}\n{view.fsname}\n{status}",
            NodeAttrs.for_daemon(
                view.pid, view.comm, view.alive, view.conn, view.mountpoint, view.how
            ),
        )
    )
    return did


#: ``ensure_task(tid)``: the node id of a task, read from /proc if the scan missed it (None:
#: the task is gone)
EnsureTask = Callable[[int], str | None]


def _task_or_gone(g: WaitGraph, task: TaskRef, ensure_task: EnsureTask) -> str | None:
    """The node of ``task`` (a holder the model names); an ``(exited)`` node if it is gone."""
    if task.pid is None:
        return None
    hid = ensure_task(task.pid)
    if hid is None:
        hid = task_id(task.pid)
        g.add(Node(hid, "task", f"{task.comm}/{task.pid}\n(exited)", NodeAttrs.exited(task.pid)))
    return hid


def _request_edges(
    g: WaitGraph, view: DaemonView, req: RequestSnap, nid: str, ensure_task: EnsureTask
) -> None:
    state = view.snapshot
    task_pid = req.pid
    linked = False
    if req.worker is not None:
        wid = ensure_task(req.worker)
        if wid is not None:
            g.link(Edge(nid, wid, "served_by", "served by worker thread"))
            linked = True
    for lock in state.locks:
        for w in lock.waiters:
            if w.pid != task_pid or task_pid is None:
                continue
            lid = _lock_node(g, view, lock)
            chain = w.chain
            label = (
                f"{' -> '.join(chain[-2:])} {w.mode or '?'} on {lock.node}"
                if lock.scope
                else f"down_{w.mode or '?'}" + (f" in {chain[-1]}" if chain else "")
            )
            g.link(Edge(nid, lid, "lock_wait", label, attrs=EdgeAttrs.modelled(w.mode, chain)))
            linked = True
            for h in _holders(g, lock):
                hid = _task_or_gone(g, h.task, ensure_task) if h.task is not None else None
                if hid is None:
                    continue
                hchain = h.chain
                g.link(
                    Edge(
                        lid,
                        hid,
                        "held_by",
                        f"held {h.mode or '?'}"
                        + (
                            f" on {h.node} by {hchain[0]}"
                            if h.node and hchain
                            else f" since {hchain[-1]}"
                            if hchain
                            else ""
                        ),
                        attrs=EdgeAttrs.modelled(h.mode, hchain),
                    )
                )
    for comp in state.completions:
        for cw in comp.waiters:
            if cw.pid != task_pid or task_pid is None:
                continue
            _completion_edges(g, view, comp, nid, cw.chain, ensure_task)
            linked = True
    for point in state.inject:
        if task_pid and any(t.pid == task_pid for t in point.waiting):
            pid_ = f"inject:{view.pid}:{point.point}"
            g.add(
                Node(
                    pid_,
                    "inject",
                    f"injection point\n{point.point}\n{point.action}",
                    NodeAttrs.inject(point.point, point.action),
                )
            )
            g.link(Edge(nid, pid_, "barrier", "held at"))
            linked = True
    did = _daemon_node(g, view)
    if not linked:
        g.link(Edge(nid, did, "handler", "not answered by" if view.alive else "daemon gone"))
    else:
        g.link(Edge(nid, did, "context", "in daemon"))


def _completion_edges(
    g: WaitGraph,
    view: DaemonView,
    comp: CompletionSnap,
    nid: str,
    chain: tuple[str, ...],
    ensure_task: EnsureTask,
) -> None:
    """request --completion_wait--> completion --held_by--> the task that is to complete it
    (a completion held by a task: autofs4's wait queue, answered by the automount daemon's
    thread, a process that serves no mount; see :mod:`stackfs.kernel.completion`)."""
    cid = f"completion:{view.pid}:{comp.id}"
    g.add(
        Node(
            cid,
            "completion",
            f"{comp.ident}\n{comp.desc}\n(model, {view.fsname})",
            NodeAttrs.for_completion(comp, view.pid, view.conn),
        )
    )
    g.link(
        Edge(
            nid,
            cid,
            "completion_wait",
            "wait_for_completion" + (f" in {chain[-1]}" if chain else ""),
            attrs=EdgeAttrs.completion_wait(chain),
        )
    )
    if comp.holder is None:
        return
    hid = _task_or_gone(g, comp.holder, ensure_task)
    if hid is not None:
        g.link(
            Edge(cid, hid, "held_by", "to be completed by", attrs=EdgeAttrs.to_complete(comp.ident))
        )


def _lock_node(g: WaitGraph, view: DaemonView, lock: LockSnap) -> str:
    """A modelled lock: named per daemon, or per cluster when the daemon gives it a ``scope``
    (a glock of lockspace X is one lock whichever node's daemon reports it)."""
    scope = lock.scope
    lid = f"lock:{scope}:{lock.ident}" if scope else f"lock:{view.pid}:{lock.ident}"
    if lid in g.nodes:
        return lid
    where = f"{scope}, {_scope_state(g, lock)}" if scope else view.fsname
    g.add(
        Node(
            lid,
            "lock",
            f"{lock.ident}\n{lock.desc}\n(model, {where})",
            NodeAttrs.for_lock(lock, view.pid, view.conn, scope),
        )
    )
    if scope:
        svc = _service_of(g, scope, lock.dlm_pid)
        if svc is not None:
            g.link(Edge(lid, svc, "context", "resource of"))
    return lid


#: where a task sleeps on a folio that its own FUSE READ has locked: a page fault, or a buffered
#: read waiting for the readahead it started (``filemap_read`` -> ``filemap_get_pages``)
FOLIO_WAITS = ("filemap_fault", "filemap_get_pages")


def page_fault_wait(t: TaskInfo, req: RequestSnap) -> bool:
    """Task ``t`` (not in a FUSE reply wait) sleeps in a page fault, or a buffered read, whose
    page-in is the in-flight FUSE READ ``req`` carrying its pid (``filemap_fault`` /
    ``filemap_get_pages`` wait on the locked folio while ``fuse_read_folio``/readahead's READ
    is out: docs/fuse-fault-path.md)."""
    return req.op == "read" and any(f in t.frames for f in FOLIO_WAITS)


def _scoped(g: WaitGraph, lock: LockSnap) -> list[tuple[DaemonView, LockSnap]]:
    """Every daemon's entry for the cluster-scoped ``lock`` (each node reports its part)."""
    if not lock.scope:
        return []
    return [
        (view, other)
        for view in g.daemons.values()
        for other in view.snapshot.locks
        if other.scope == lock.scope and (other.name, other.key) == (lock.name, lock.key)
    ]


def _holders(g: WaitGraph, lock: LockSnap) -> list[LockHold]:
    """The holders of ``lock``: on every node for a cluster-scoped lock."""
    scoped = _scoped(g, lock)
    if not scoped:
        return list(lock.holders)
    return [replace(h, node=other.node) for _v, other in scoped for h in other.holders]


def _scope_state(g: WaitGraph, lock: LockSnap) -> str:
    """ "node1 EX, node2 NL (demote to PR asked)": each node's cached mode of a glock."""
    parts = []
    for _v, other in _scoped(g, lock):
        st = f"{other.node} {other.state or 'UN'}"
        if other.demote:
            st += f" (demote for {other.demote})"
        parts.append(st)
    return ", ".join(parts)


def _service_of(g: WaitGraph, scope: str, pid: int | None = None) -> str | None:
    """The node of the lock manager serving ``scope`` ("dlm:LOCKSPACE"): the one the lock's
    daemon names (``dlm_pid``), else the service whose state lists that lockspace."""
    svc = g.services.get(pid) if pid is not None else None
    if svc is None:
        for other in g.services.values():
            if scope.startswith("dlm:") and scope[4:] in other.dlm.lockspaces:
                svc = other
    if svc is None and pid is None:
        return None
    pid = svc.pid if svc is not None else pid
    kind = svc.kind if svc is not None else "dlm"
    sid = f"daemon:{pid}"
    g.add(
        Node(
            sid,
            "daemon",
            f"lock manager {kind}/{pid}\n(service, no mount)",
            NodeAttrs.for_service(pid, kind),
        )
    )
    return sid


# -- naming a cycle -------------------------------------------------------------------------------


def name_cycle(g: WaitGraph, nodes: list[str]) -> Cycle:
    """Rotate the cycle to start at a task, split it into task-to-task segments and name it."""
    first = next((i for i, n in enumerate(nodes) if g.nodes[n].kind == "task"), 0)
    nodes = nodes[first:] + nodes[:first]
    found = [g.edge(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]
    edges = [e for e in found if e is not None]
    tasks: list[int] = [
        tid
        for n in nodes
        if g.nodes[n].kind == "task" and (tid := g.nodes[n].attrs.tid) is not None
    ]
    segments: list[Segment] = []
    cur: Segment | None = None
    for e in edges:
        src, dst = g.nodes[e.src], g.nodes[e.dst]
        if src.kind == "task":
            cur = Segment(waiter=_tid(src), holder=-1)
        if cur is None:
            continue
        if dst.kind == "request":
            cur.request = dst.id
            cur.wait_at = cur.wait_at or (e.label.split("(")[-1].rstrip(")") or None)
        if dst.kind in ("lock", "klock"):
            cur.lock = dst.id
            cur.wait_mode = e.attrs.mode
            cur.wait_at = e.attrs.where
        if dst.kind == "completion":
            cur.lock = dst.id
            cur.wait_at = e.attrs.chain[-1] if e.attrs.chain else None
        if src.kind in ("lock", "klock") and e.kind == "held_by":
            cur.hold_mode = e.attrs.mode
            cur.hold_at = e.attrs.where
        if dst.kind == "task":
            cur.holder = _tid(dst)
            segments.append(cur)
            cur = None
    kinds = {g.nodes[n].kind for n in nodes}
    ntask = len(set(tasks))
    if "lock" in kinds and ntask == 1:
        kind, title = (
            "recursive_locking",
            "possible recursive locking: a task waits for a lock it holds itself",
        )
    elif "lock" in kinds or ("klock" in kinds and "request" not in kinds and ntask > 1):
        kind, title = "lock_inversion", "circular locking dependency (ABBA deadlock)"
    elif "request" in kinds or "conn" in kinds:
        kind, title = (
            "fuse_reentry",
            ("FUSE daemon re-entry: the reply a task waits for depends on a lock that task holds"),
        )
    else:
        kind, title = "wait_cycle", "cycle in the wait-for graph"
    parts = []
    for n, e in zip(nodes, edges, strict=False):
        parts.append(_short(g.nodes[n]))
        parts.append(f"-[{e.label}]->")
    parts.append(_short(g.nodes[nodes[0]]))
    return Cycle(nodes, edges, kind, title, " ".join(parts), [t for t in tasks if t], segments)


def _tid(n: Node) -> int:
    """A task node's tid (-1: none)."""
    return n.attrs.tid if n.attrs.tid is not None else -1


def _short(n: Node) -> str:
    if n.kind == "task":
        return n.attrs.name
    if n.kind == "request":
        req = request_of(n)
        return f"FUSE {_request_label(req)} (req #{req.id}, conn {n.attrs.conn})"
    if n.kind == "klock":
        return f"i_rwsem {n.attrs.path}"
    if n.kind in ("lock", "completion"):
        return f"{n.attrs.ident} ({n.attrs.desc or 'model'})"
    return n.label.replace("\n", " ")


def short(g: WaitGraph, nid: str) -> str:
    return _short(g.nodes[nid]) if nid in g.nodes else nid


def find_cycles(g: WaitGraph) -> list[Cycle]:
    return [name_cycle(g, c) for c in g.cycles()]
