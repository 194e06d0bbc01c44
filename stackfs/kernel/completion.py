"""Completions held by a task: a wait that ends when *another task* says so (``struct completion``).

A lock has holders that release it; a completion has a task that is expected to call
``complete_all()``: autofs4's ``struct autofs_wait_queue`` is one (the daemon's task answers it
with ``AUTOFS_IOC_READY``/``FAIL``, seed 001), a DLM completion AST another. Tasks that sleep in
``wait_for_completion`` on it wait for *that* task, which is what the watchdog needs to close a
cycle through a process that serves no mount (the automount daemon)::

    c = state.completions.new("autofs_wait_queue", "proj", holder=daemon_task, desc="mount proj")
    await c.wait()                 # current task, with its model call chain
    c.set_holder(worker_task)      # the daemon's thread that now works on it
    c.complete_all(status=0)       # wakes every waiter; status (0 or -errno) is kept

The snapshot (``completions`` in the state) lists each pending completion with its holder and
waiters, in the ``locks`` style: ``{"name", "key", "desc", "holder": {"pid", "comm"}, "waiters":
[{"task", "chain", "since"}], "done", "status"}``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import trio

from stackfs.kernel.task import Task, current_chain, get_current_task


class Completion:
    """One completion: who is to complete it, who waits on it."""

    def __init__(
        self, table: CompletionTable, cid: int, name: str, key: str, holder: Task | None, desc: str
    ) -> None:
        self.table = table
        self.id = cid
        self.name = name
        self.key = key
        self.desc = desc
        self.holder = holder
        self.created = time.time()
        self.done = False
        #: 0, or a negative errno (what ``autofs4_wait`` returns)
        self.status = 0
        self.waiters: dict[int, tuple[Task, tuple[str, ...], float]] = {}
        self._event = trio.Event()
        self._ids = itertools.count(1)

    def set_holder(self, task: Task | None) -> None:
        self.holder = task

    async def wait(self) -> int:
        """``wait_for_completion`` for the current task; returns the status."""
        if self.done:
            return self.status
        wid = next(self._ids)
        self.waiters[wid] = (get_current_task(), current_chain(), time.time())
        try:
            await self._event.wait()
        finally:
            self.waiters.pop(wid, None)
        return self.status

    def complete_all(self, status: int = 0) -> None:
        self.status = status
        self.done = True
        self._event.set()
        self.table.forget(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "key": self.key,
            "desc": self.desc,
            "holder": self.holder.to_json() if self.holder is not None else None,
            "waiters": [
                {"task": t.to_json(), "chain": list(chain), "since": since}
                for t, chain, since in self.waiters.values()
            ],
            "done": self.done,
            "status": self.status,
            "created": self.created,
        }


class CompletionTable:
    """The pending completions of one daemon (for the state snapshot)."""

    def __init__(self) -> None:
        self._pending: dict[int, Completion] = {}
        self._ids = itertools.count(1)

    def new(self, name: str, key: str, holder: Task | None = None, desc: str = "") -> Completion:
        c = Completion(self, next(self._ids), name, key, holder, desc)
        self._pending[c.id] = c
        return c

    def forget(self, c: Completion) -> None:
        self._pending.pop(c.id, None)

    def pending(self) -> list[Completion]:
        return list(self._pending.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in self._pending.values()]
