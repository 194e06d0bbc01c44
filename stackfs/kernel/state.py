"""``KernelState``: the modelled kernel of one testbed daemon, and its state snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stackfs.kernel.completion import CompletionTable
from stackfs.kernel.dcache import DCache
from stackfs.kernel.events import OOPS, Event, EventLog
from stackfs.kernel.inflight import InflightTable
from stackfs.kernel.inject import InjectionPoints
from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.locks import LockTable


class KernelState:
    """Locks, lockdep, dentry caches, injection points, requests in flight and the event log.

    One per daemon. :meth:`snapshot` is the state of docs/ARCHITECTURE.md minus the ``daemon``
    and ``now`` keys, which the daemon adds.

    Oopses: a model assertion records an ``oops`` event, runs the :attr:`on_oops` hooks, then
    raises :class:`~stackfs.kernel.events.Oops`. The caller answers the request with EIO and goes
    on, unless :attr:`panic_on_oops` is set, in which case it should stop serving (the daemon
    can do that from a hook).
    """

    def __init__(self, *, max_events: int = 1000, panic_on_oops: bool = False) -> None:
        self.events = EventLog(max_events)
        self.lockdep = LockDep(self.events)
        self.locks = LockTable(self.lockdep, self.events)
        self.inject = InjectionPoints(self.events)
        self.inflight = InflightTable()
        #: completions held by tasks (autofs4 wait queues: :mod:`stackfs.kernel.completion`)
        self.completions = CompletionTable()
        #: stop serving after an oops (``panic_on_oops`` sysctl)
        self.panic_on_oops = panic_on_oops
        #: called with the event after every oops is recorded (before Oops is raised)
        self.on_oops: list[Callable[[Event], None]] = []
        self._dcaches: dict[str, DCache] = {}
        self.events.hooks.append(self._dispatch)

    def _dispatch(self, event: Event) -> None:
        if event["type"] == OOPS:
            for hook in list(self.on_oops):
                hook(event)

    def dcache(self, sb: str = "") -> DCache:
        """The dentry cache of superblock ``sb`` (created on first use)."""
        dc = self._dcaches.get(sb)
        if dc is None:
            dc = self._dcaches[sb] = DCache(sb, self.events)
        return dc

    @property
    def oopses(self) -> int:
        """How many oopses this daemon has had."""
        return self.events.counts.get(OOPS, 0)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """``{"inflight", "locks", "lock_order", "events", "inject", "completions"}``;
        JSON-serialisable."""
        now = time.time() if now is None else now
        return {
            "inflight": self.inflight.snapshot(now),
            "locks": self.locks.snapshot(),
            "lock_order": self.lockdep.snapshot(),
            "events": self.events.snapshot(),
            "inject": self.inject.snapshot(),
            "completions": self.completions.snapshot(),
        }
