"""The kernel log of the model: a bounded list of events, and :class:`Oops`.

An event is what the real kernel would print to dmesg when it detects something: lockdep's
"possible recursive locking detected" (``recursive_locking``) and "possible circular locking
dependency detected" (``lock_inversion``), a ``BUG_ON`` (``oops``), or the testbed's own
``barrier_timeout``. Each is one JSON object in the schema of docs/ARCHITECTURE.md::

    {"type": ..., "time": time.time(), "summary": "one line",
     "tasks": [{"pid", "comm", "chain"}], "detail": {...}, "release": "4.7-rc1"}

(``release`` only when the daemon's model declares the kernel release it stands for.)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

RECURSIVE_LOCKING = "recursive_locking"
LOCK_INVERSION = "lock_inversion"
OOPS = "oops"
BARRIER_TIMEOUT = "barrier_timeout"

Event = dict[str, Any]
Hook = Callable[[Event], None]


class Oops(Exception):  # noqa: N818 - the kernel's word
    """A failed kernel assertion (``BUG_ON``) in the model.

    Raised after the ``oops`` event has been recorded (:attr:`event`). In the real kernel the
    task dies; a testbed daemon turns it into EIO for the request and goes on serving, or stops
    serving when :attr:`KernelState.panic_on_oops <stackfs.kernel.state.KernelState>` is set.
    """

    def __init__(self, event: Event) -> None:
        super().__init__(event["summary"])
        self.event = event


def make_event(
    type: str,  # noqa: A002 - the schema's key
    summary: str,
    tasks: Iterable[dict[str, Any]] = (),
    detail: dict[str, Any] | None = None,
) -> Event:
    """An event object (not recorded anywhere)."""
    return {
        "type": type,
        "time": time.time(),
        "summary": summary,
        "tasks": list(tasks),
        "detail": detail if detail is not None else {},
    }


class EventLog:
    """The newest ``maxlen`` events, oldest first; hooks run on every new event."""

    def __init__(self, maxlen: int = 1000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self.hooks: list[Hook] = []
        #: events ever recorded, per type (not bounded by ``maxlen``)
        self.counts: dict[str, int] = {}
        #: the kernel release the model stands for (e.g. ``"4.7-rc1"``, declared per variant by
        #: the backend: :attr:`backends.base.StoreFS.releases`), stamped on every event as
        #: ``"release"`` so a report prints the frames under that release, not the host's
        self.release: str | None = None

    def record(
        self,
        type: str,  # noqa: A002 - the schema's key
        summary: str,
        tasks: Iterable[dict[str, Any]] = (),
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """Append an event and run the hooks (a failing hook is logged, never raised)."""
        event = make_event(type, summary, tasks, detail)
        if self.release is not None:
            event["release"] = self.release
        self._events.append(event)
        self.counts[type] = self.counts.get(type, 0) + 1
        for hook in list(self.hooks):
            try:
                hook(event)
            except Exception:  # noqa: BLE001 - a hook must not break the model
                log.exception("event hook %r failed on %s", hook, type)
        return event

    def of_type(self, type: str) -> list[Event]:  # noqa: A002
        return [e for e in self._events if e["type"] == type]

    def snapshot(self) -> list[Event]:
        return list(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events))
