"""The table of FUSE requests a daemon is serving right now.

Every handler is wrapped in ``rid = inflight.begin(op, ino, name, task)`` ... ``inflight.end(rid)``
(stackfs/runtime/daemon.py does it). A handler that makes a blocking syscall in a worker thread
records
the thread with :meth:`InflightTable.set_worker` (called from that thread), so the watchdog can
follow the request into the layer below, where that tid is ``ctx.pid``.

This runs on every request, so :meth:`~InflightTable.begin` and :meth:`~InflightTable.end` do a
dict insert/pop and nothing else (about a microsecond). ``task`` may be a bare pid: its comm is
then read at snapshot time, when the caller is still blocked in its syscall.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from stackfs.kernel.task import Task


class Request:
    """One request in flight."""

    __slots__ = ("id", "op", "ino", "name", "task", "since", "worker", "fh")

    def __init__(
        self,
        rid: int,
        op: str,
        ino: int | None,
        name: bytes | str | None,
        task: Task | int | None,
        since: float,
        fh: int | None,
    ) -> None:
        self.id: int = rid
        self.op: str = op
        self.ino: int | None = ino
        self.name: bytes | str | None = name
        self.task: Task | int | None = task
        self.since: float = since
        self.worker: int | None = None
        self.fh: int | None = fh

    def to_json(self, now: float) -> dict[str, Any]:
        task = self.task
        if isinstance(task, int):
            task = Task.from_pid(task)
        name = self.name
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        out: dict[str, Any] = {
            "id": self.id,
            "op": self.op,
            "ino": self.ino,
            "name": name,
            "task": task.to_json() if task is not None else None,
            "since": self.since,
            "age": max(0.0, now - self.since),
            "worker": {"tid": self.worker} if self.worker is not None else None,
        }
        if self.fh is not None:
            out["fh"] = self.fh
        return out


class InflightTable:
    """Requests in flight by id.

    A request is kept as a tuple ``(op, ino, name, task, since, fh)`` (a :class:`Request` is
    made only when someone looks: :meth:`get`, :meth:`snapshot`), and the worker threads in
    their own dict: :meth:`begin` and :meth:`end` run on every FUSE request."""

    __slots__ = ("_reqs", "_workers", "_next")

    def __init__(self) -> None:
        self._reqs: dict[int, tuple[Any, ...]] = {}
        self._workers: dict[int, int] = {}
        self._next = itertools.count(1).__next__

    def begin(
        self,
        op: str,
        ino: int | None,
        name: bytes | str | None,
        task: Task | int | None,
        fh: int | None = None,
    ) -> int:
        """Record a request; returns its id. ``task``: a Task, or the caller's pid (ctx.pid)."""
        rid = self._next()
        self._reqs[rid] = (op, ino, name, task, time.time(), fh)
        return rid

    def end(self, rid: int) -> None:
        """The request is answered (unknown ids are ignored)."""
        self._reqs.pop(rid, None)
        if self._workers:
            self._workers.pop(rid, None)

    def set_worker(self, rid: int, tid: int | None = None) -> None:
        """Record the worker thread serving request ``rid`` (default: the calling thread)."""
        if rid in self._reqs:
            self._workers[rid] = tid if tid is not None else threading.get_native_id()

    def get(self, rid: int) -> Request | None:
        rec = self._reqs.get(rid)
        if rec is None:
            return None
        op, ino, name, task, since, fh = rec
        req = Request(rid, op, ino, name, task, since, fh)
        req.worker = self._workers.get(rid)
        return req

    def __len__(self) -> int:
        return len(self._reqs)

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """The ``inflight`` list of the state snapshot, oldest first."""
        now = time.time() if now is None else now
        for rid in [r for r in self._workers if r not in self._reqs]:
            self._workers.pop(rid, None)  # a worker recorded just as its request ended
        reqs = (self.get(rid) for rid in list(self._reqs))
        return [r.to_json(now) for r in reqs if r is not None]
