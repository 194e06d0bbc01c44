"""A lock validator in the manner of the kernel's lockdep (kernel/locking/lockdep.c).

Per task (keyed by pid, because a modelled lock may be taken in one FUSE request and released in
another one of the same calling thread) it keeps the stack of locks held. Each time a task takes a
lock B while holding A, the dependency A -> B is recorded once, with the task and both call
chains. When a new dependency closes a cycle (A -> B recorded now, B -> ... -> A recorded
earlier, possibly by another task) a ``lock_inversion`` event is recorded *at once*, whether or
not the run deadlocks: this is lockdep's "possible circular locking dependency detected",
and the event's detail carries what its "Possible unsafe locking scenario" table needs.

Locks are identified by instance (``"i_rwsem ino:5"``), not by lockdep class: the testbed wants
to name the very inodes involved. Recursive locking (the same lock again) is reported by the
lock itself (:mod:`stackfs.kernel.locks`), which knows the holder's chain.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from stackfs.kernel.events import LOCK_INVERSION, EventLog
from stackfs.kernel.task import Task, task_json


@dataclass(slots=True)
class HeldLock:
    """One entry of a task's held-lock stack (``struct held_lock``)."""

    ident: str
    mode: str
    chain: tuple[str, ...]
    since: float


@dataclass(slots=True)
class Dependency:
    """``first -> then``: ``task`` took ``then`` (at ``chain``) while holding ``first``."""

    first: str
    then: str
    task: Task
    chain: tuple[str, ...]
    first_chain: tuple[str, ...]
    first_mode: str
    then_mode: str
    time: float

    def to_json(self) -> dict[str, Any]:
        """The ``lock_order`` entry of the state snapshot."""
        return {
            "first": self.first,
            "then": self.then,
            "task": self.task.to_json(),
            "chain": list(self.chain),
        }

    def detail(self) -> dict[str, Any]:
        """Everything known about the dependency (for event details)."""
        return {
            **self.to_json(),
            "first_chain": list(self.first_chain),
            "first_mode": self.first_mode,
            "then_mode": self.then_mode,
            "time": self.time,
        }


class LockDep:
    """Held-lock stacks per task, the dependency graph, and inversion reports."""

    def __init__(self, events: EventLog | None = None) -> None:
        self.events = events
        self._held: dict[int, list[HeldLock]] = {}
        self._after: dict[str, dict[str, Dependency]] = {}
        self._order: list[Dependency] = []
        self._reported: set[frozenset[tuple[str, str]]] = set()

    # -- the lock_acquire / lock_release hooks -------------------------------------------------

    def lock_acquire(
        self,
        task: Task,
        ident: str,
        mode: str,
        chain: tuple[str, ...],
        *,
        trylock: bool = False,
    ) -> None:
        """``task`` is about to take ``ident`` (called before it may block, as in the kernel).

        Records a dependency from every other lock the task holds, and reports a new cycle.
        A trylock cannot deadlock and adds no dependencies.
        """
        stack = self._held.get(task.pid)
        if stack is None:
            stack = self._held[task.pid] = []
        elif not trylock:
            for held in stack:
                if held.ident != ident and ident not in self._after.get(held.ident, ()):
                    self._add(task, held, ident, mode, chain)
        stack.append(HeldLock(ident, mode, chain, time.time()))

    def lock_release(self, task: Task, ident: str) -> bool:
        """``task`` dropped (or gave up waiting for) ``ident``. False if it did not hold it."""
        stack = self._held.get(task.pid)
        if not stack:
            return False
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].ident == ident:
                del stack[i]
                if not stack:
                    del self._held[task.pid]
                return True
        return False

    # -- queries ---------------------------------------------------------------------------------

    def held_by(self, pid: int) -> list[HeldLock]:
        """The locks task ``pid`` holds (or waits for), oldest first."""
        return list(self._held.get(pid, ()))

    def dependencies(self) -> list[Dependency]:
        return list(self._order)

    def snapshot(self) -> list[dict[str, Any]]:
        """The ``lock_order`` list of the state snapshot, in the order first seen."""
        return [d.to_json() for d in self._order]

    # -- graph -----------------------------------------------------------------------------------

    def _add(
        self, task: Task, held: HeldLock, ident: str, mode: str, chain: tuple[str, ...]
    ) -> None:
        dep = Dependency(held.ident, ident, task, chain, held.chain, held.mode, mode, time.time())
        path = self._path(ident, held.ident)
        self._after.setdefault(held.ident, {})[ident] = dep
        self._order.append(dep)
        if path is not None:
            self._report(dep, path)

    def _path(self, src: str, dst: str) -> list[Dependency] | None:
        """Dependencies leading from ``src`` to ``dst`` (breadth first), or None."""
        if src not in self._after:
            return None
        came: dict[str, Dependency] = {}
        queue = deque([src])
        seen = {src}
        while queue:
            node = queue.popleft()
            for nxt, dep in self._after.get(node, {}).items():
                if nxt in seen:
                    continue
                came[nxt] = dep
                if nxt == dst:
                    path = [dep]
                    while path[0].first != src:
                        path.insert(0, came[path[0].first])
                    return path
                seen.add(nxt)
                queue.append(nxt)
        return None

    def _report(self, dep: Dependency, path: list[Dependency]) -> None:
        key = frozenset((d.first, d.then) for d in [dep, *path])
        if key in self._reported or self.events is None:
            self._reported.add(key)
            return
        self._reported.add(key)
        source, target = dep.then, dep.first
        parent = path[-1].first  # the existing edge parent -> target closes the cycle
        other = path[-1]
        cycle = " -> ".join([dep.first, dep.then, *[d.then for d in path]])
        summary = (
            f"possible circular locking dependency: {dep.task} takes {source} while holding "
            f"{target}; {other.task} took {target} while holding {parent} ({cycle})"
        )
        tasks = [task_json(dep.task, dep.chain)]
        for d in path:
            tasks.append(task_json(d.task, d.chain))
        self.events.record(
            LOCK_INVERSION,
            summary,
            tasks,
            {
                "new": dep.detail(),
                "existing": [d.detail() for d in path],
                "cycle": [dep.first, dep.then, *[d.then for d in path]],
                "scenario": unsafe_scenario(
                    source, parent, target, cpu0=str(dep.task), cpu1=str(other.task)
                ),
            },
        )


def unsafe_scenario(
    source: str, parent: str, target: str, *, cpu0: str = "", cpu1: str = ""
) -> list[str]:
    """The lines of lockdep's "Possible unsafe locking scenario" (print_circular_lock_scenario).

    ``target`` is held by the task taking ``source``; ``parent -> target`` is the existing edge.
    """
    lines = []
    if parent != source:
        lines += ["Chain exists of:", f"  {source} --> {parent} --> {target}", ""]
    col = " " * 31
    lines += [
        " Possible unsafe locking scenario:",
        "",
        f"       {'CPU0':<24}CPU1",
        f"       {'----':<24}----",
    ]
    if cpu0 or cpu1:
        left = f"({cpu0})" if cpu0 else ""
        right = f"({cpu1})" if cpu1 else ""
        lines.append(f"       {left:<24}{right}")
    lines += [
        f"  lock({target});",
        f"{col}lock({parent});",
        f"{col}lock({target});",
        f"  lock({source});",
        "",
        " *** DEADLOCK ***",
    ]
    return lines
