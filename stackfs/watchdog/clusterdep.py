"""Lock order merged across daemons: an ABBA across the nodes of a cluster, hang or not.

Each testbed daemon's lockdep (:mod:`stackfs.kernel.lockdep`) records the order in which its
tasks take its modelled locks (``lock_order``). A cluster filesystem's glocks are named the same
on every node (``glock LOCKSPACE:2/<ino>``), so node 1 recording ``A -> B`` and node 2 recording
``B -> A`` is a circular dependency that neither node's lockdep can see alone (seed 004: "a
deadlock across machines that no single kernel's lockdep can see"). :func:`inversions` merges
every daemon's order and returns the cycles whose dependencies come from more than one daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackfs.kernel.snapshot import LockOrderSnap
from stackfs.watchdog.daemons import DaemonView, ServiceView

MAX = 8


@dataclass(frozen=True)
class Dep:
    """One daemon's ``lock_order`` entry, with the daemon that recorded it."""

    order: LockOrderSnap
    daemon: int | None
    fsname: str
    mountpoint: str

    @property
    def first(self) -> str:
        return self.order.first

    @property
    def then(self) -> str:
        return self.order.then


def merged(views: dict[int, DaemonView]) -> list[Dep]:
    """Every daemon's ``lock_order`` entry, with the daemon (pid, fsname) that recorded it."""
    return [
        Dep(dep, v.pid, v.fsname, v.mountpoint)
        for v in views.values()
        for dep in v.snapshot.lock_order
    ]


def inversions(views: dict[int, DaemonView]) -> list[list[Dep]]:
    """Cycles of the merged order that more than one daemon contributed to (each once)."""
    deps = merged(views)
    succ: dict[str, list[Dep]] = {}
    for d in deps:
        succ.setdefault(d.first, []).append(d)
    found: list[list[Dep]] = []
    seen: set[frozenset[tuple[str, str]]] = set()

    def walk(start: str, node: str, path: list[Dep]) -> None:
        for d in succ.get(node, []):
            if len(found) >= MAX:
                return
            if d.then == start:
                cyc = path + [d]
                key = frozenset((x.first, x.then) for x in cyc)
                if len({x.daemon for x in cyc}) > 1 and key not in seen:
                    seen.add(key)
                    found.append(cyc)
            elif d.then > start and all(d.then != x.first for x in path):
                walk(start, d.then, path + [d])

    for start in sorted(succ):
        walk(start, start, [])
    return found


def render(cycle: list[Dep]) -> str:
    parts = [
        f"{d.first} -> {d.then} ({d.order.task.name() if d.order.task else '?/?'} in {d.fsname})"
        for d in cycle
    ]
    return (
        "circular locking dependency across daemons (lock order merged from "
        f"{len({d.daemon for d in cycle})} daemons): " + "; ".join(parts)
    )


def dlm_lines(services: dict[int, ServiceView]) -> list[str]:
    """What each lock manager holds, one line per contended resource: granted modes per node,
    queued requests, blocking ASTs sent (the DLM's side of a cluster deadlock)."""
    out = []
    for pid, svc in sorted(services.items()):
        for res in svc.dlm.resources:
            if not res.queue:
                continue
            granted = ", ".join(f"{g.node} {g.mode}" for g in res.granted)
            queued = ", ".join(f"{q.node} {q.mode} ({q.age or 0:.2f} s)" for q in res.queue)
            basts = ", ".join(f"{b.node} (for {b.wanted})" for b in res.basts)
            out.append(
                f"lock manager {svc.kind}/{pid} (modelled DLM): resource "
                f"{res.lockspace}:{res.name} granted [{granted}], queued "
                f"[{queued}], blocking AST sent to [{basts or 'none'}]"
            )
    return out
