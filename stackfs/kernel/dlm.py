"""A distributed lock manager's lock resources, as ``fs/dlm`` keeps them (modelled).

A cluster filesystem names one lock resource per inode in its lockspace (GFS2: glock ``2,<ino>``
of type ``LM_TYPE_INODE``). A node holds a resource in one of six modes; a request that conflicts
with what another node holds is queued, and each node holding an incompatible mode gets a
*blocking AST* (``bast``: "someone wants mode M") once, so it can write back, drop its cache and
convert down (``dlm_lock(..., DLM_LKF_CONVERT)``). Requests are granted in order
(``grant_pending_locks``: a queued request is not overtaken by a later one), except that a
conversion down (a demote, or an unlock) is always granted at once.

:class:`DLM` is pure bookkeeping: every call returns the :class:`Action` s the lock server must send
(grant completions, blocking ASTs). A node that goes away (its daemon died: its connection to the
lock server closed) loses every lock it held or asked for (:meth:`DLM.purge_node`), as DLM
recovery does for a node fenced out of the cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: the modes, weakest first
MODES = ("NL", "CR", "CW", "PR", "PW", "EX")
_RANK = {m: i for i, m in enumerate(MODES)}
#: the compatibility matrix of fs/dlm (``__dlm_compat_matrix``): mode -> modes it can share with
_COMPAT: dict[str, frozenset[str]] = {
    "NL": frozenset(MODES),
    "CR": frozenset({"NL", "CR", "CW", "PR", "PW"}),
    "CW": frozenset({"NL", "CR", "CW"}),
    "PR": frozenset({"NL", "CR", "PR"}),
    "PW": frozenset({"NL", "CR"}),
    "EX": frozenset({"NL"}),
}


def check_mode(mode: str) -> str:
    if mode not in _RANK:
        raise ValueError(f"unknown lock mode {mode!r} (known: {', '.join(MODES)})")
    return mode


def compatible(a: str, b: str) -> bool:
    """May one node hold ``a`` while another holds ``b``?"""
    return b in _COMPAT[check_mode(a)]


@dataclass
class Request:
    node: str
    mode: str
    rid: int
    since: float = field(default_factory=time.time)


@dataclass
class Resource:
    lockspace: str
    name: str
    granted: dict[str, str] = field(default_factory=dict)
    queue: list[Request] = field(default_factory=list)
    #: (holder node, wanted mode) blocking ASTs sent and not yet answered by a conversion
    basts: set[tuple[str, str]] = field(default_factory=set)

    def grantable(self, node: str, mode: str) -> bool:
        return all(compatible(mode, m) for n, m in self.granted.items() if n != node)

    def to_json(self, nodes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        nodes = nodes or {}
        return {
            "lockspace": self.lockspace,
            "name": self.name,
            "granted": [
                {"node": n, "mode": m, **nodes.get(n, {})} for n, m in sorted(self.granted.items())
            ],
            "queue": [
                {
                    "node": r.node,
                    "mode": r.mode,
                    "rid": r.rid,
                    "age": round(time.time() - r.since, 3),
                    **nodes.get(r.node, {}),
                }
                for r in self.queue
            ],
            "basts": [{"node": n, "wanted": m} for n, m in sorted(self.basts)],
        }


@dataclass(frozen=True)
class Action:
    """What the lock server sends: ``grant`` (to ``node``: request ``rid`` granted in ``mode``)
    or ``bast`` (to ``node``: another node wants ``mode``; convert down)."""

    kind: str
    node: str
    lockspace: str
    name: str
    mode: str
    rid: int = 0


class DLM:
    """Every lock resource of every lockspace (see the module docstring)."""

    def __init__(self) -> None:
        self.resources: dict[tuple[str, str], Resource] = {}

    def resource(self, lockspace: str, name: str) -> Resource:
        key = (lockspace, name)
        res = self.resources.get(key)
        if res is None:
            res = self.resources[key] = Resource(lockspace, name)
        return res

    def lock(
        self, lockspace: str, name: str, node: str, mode: str, rid: int, *, try_: bool = False
    ) -> list[Action]:
        """``dlm_lock``: ask for (or convert to) ``mode``. A conversion compatible with what the
        other nodes hold is granted at once, ahead of queued requests (``_can_be_granted``
        with ``now``: a conversion down always is). ``try_`` (``DLM_LKF_NOQUEUE``): a request
        that cannot be granted at once is not queued; the node is answered with the mode it
        holds (NL: none)."""
        check_mode(mode)
        res = self.resource(lockspace, name)
        held = res.granted.get(node)
        res.queue = [r for r in res.queue if r.node != node]  # a node has one request at most
        if held is not None and res.grantable(node, mode):
            res.granted[node] = mode
            res.basts = {(n, m) for n, m in res.basts if n != node}
            return [Action("grant", node, lockspace, name, mode, rid), *self._grant(res)]
        if try_:
            return [Action("grant", node, lockspace, name, held or "NL", rid), *self._grant(res)]
        res.queue.append(Request(node, mode, rid))
        return self._grant(res)

    def unlock(self, lockspace: str, name: str, node: str) -> list[Action]:
        """``dlm_unlock``: forget ``node``'s lock and request on the resource."""
        res = self.resource(lockspace, name)
        res.granted.pop(node, None)
        res.queue = [r for r in res.queue if r.node != node]
        res.basts = {(n, m) for n, m in res.basts if n != node}
        return self._grant(res)

    def purge_node(self, node: str, lockspace: str | None = None) -> list[Action]:
        """The node left the cluster (of ``lockspace``, or of all): drop everything it held or
        asked for."""
        out: list[Action] = []
        for res in list(self.resources.values()):
            if lockspace is not None and res.lockspace != lockspace:
                continue
            if node in res.granted or any(r.node == node for r in res.queue):
                out += self.unlock(res.lockspace, res.name, node)
        return out

    def _grant(self, res: Resource) -> list[Action]:
        """Grant queued requests in order; for the first that cannot be granted, a blocking AST
        to every node holding an incompatible mode (once)."""
        out: list[Action] = []
        while res.queue:
            head = res.queue[0]
            if not res.grantable(head.node, head.mode):
                for n, m in res.granted.items():
                    if (
                        n != head.node
                        and not compatible(head.mode, m)
                        and (n, head.mode) not in res.basts
                    ):
                        res.basts.add((n, head.mode))
                        out.append(Action("bast", n, res.lockspace, res.name, head.mode))
                break
            res.queue.pop(0)
            res.granted[head.node] = head.mode
            out.append(Action("grant", head.node, res.lockspace, res.name, head.mode, head.rid))
        if not res.granted and not res.queue:
            self.resources.pop((res.lockspace, res.name), None)
        return out

    def snapshot(self, nodes: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [r.to_json(nodes) for _, r in sorted(self.resources.items())]
