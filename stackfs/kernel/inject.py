"""Named injection points: where a testbed daemon can be told to wait, stall or fail.

A filesystem declares its points once (``points.declare("nfs_open_context", "the OPEN round
trip of nfs_atomic_open")``) and calls ``await points.hit("nfs_open_context")`` where the real
code would make the server round trip. What a hit does is set per point, at mount time
(``-o inject=POINT=ACTION``, :meth:`InjectionPoints.configure`) or later through the control
socket (``stackfs inject MOUNTPOINT POINT ACTION``):

``off``
    nothing (the default). A hit of a point that is off is not a trio checkpoint: it changes no
    interleaving.
``delay:SECONDS``
    sleep (cancellable).
``barrier:N[:TIMEOUT]``
    hold the first N arrivals until all N are there, then release them together: this is how
    a test forces N requests into the race window at the same time (all N go on from the same
    trio scheduling step, the N-th included). If the N-th does not come
    within TIMEOUT seconds (default 10) of an arrival, that arrival releases the round and a
    ``barrier_timeout`` event is recorded. Arrivals while a released round is still on its way
    out pass through; once every task of the round has resumed, the barrier re-arms for the next
    round, so repeated forced attempts work.
``error:ERRNAME``
    raise ``OSError(errno.ERRNAME)`` (e.g. ``error:EIO``, ``error:EISDIR``).
``sched:SOCKET``
    hold the task until the run's scheduler, listening on the unix socket SOCKET, says "go"
    (:mod:`stackfs.kernel.schedpoint`, :mod:`stackfs.kernel.sched`): ``stackfs explore`` and
    ``stackfs repro run --schedule`` put every point of a run under it. A scheduler that is gone
    lets the task through.

Hits are counted (also while off) and the tasks waiting at a point are visible in the
``inject`` part of the state snapshot. Setting a new action releases any round waiting at the
point.
"""

from __future__ import annotations

import errno as errno_mod
import math
import os
from dataclasses import dataclass
from typing import Any

import trio

from stackfs.kernel.events import BARRIER_TIMEOUT, EventLog
from stackfs.kernel.task import Task, current_chain, get_current_task, task_json

OFF = "off"
DELAY = "delay"
BARRIER = "barrier"
ERROR = "error"
SCHED = "sched"

DEFAULT_BARRIER_TIMEOUT = 10.0

_ACTION_HELP = "expected off, delay:SECONDS, barrier:N[:TIMEOUT], error:ERRNAME or sched:SOCKET"


@dataclass(frozen=True, slots=True)
class Action:
    """A parsed injection action."""

    kind: str
    seconds: float = 0.0  # delay
    n: int = 0  # barrier
    timeout: float = DEFAULT_BARRIER_TIMEOUT  # barrier
    errno: int = 0  # error
    path: str = ""  # sched: the scheduler's socket

    def __str__(self) -> str:
        if self.kind == DELAY:
            return f"delay:{self.seconds:g}"
        if self.kind == BARRIER:
            return f"barrier:{self.n}:{self.timeout:g}"
        if self.kind == ERROR:
            return f"error:{errno_mod.errorcode.get(self.errno, self.errno)}"
        if self.kind == SCHED:
            return f"sched:{self.path}"
        return OFF


ACTION_OFF = Action(OFF)


def _seconds(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad {what} {text!r} in injection action {spec!r}: {_ACTION_HELP}")
    return value


def parse_action(spec: str) -> Action:
    """Parse ``off``, ``delay:S``, ``barrier:N[:T]``, ``error:ERRNAME`` or ``sched:SOCKET``;
    ValueError if bad."""
    kind, _, rest = spec.strip().partition(":")
    if kind == OFF and not rest:
        return ACTION_OFF
    if kind == DELAY and rest:
        return Action(DELAY, seconds=_seconds(rest, "delay", spec))
    if kind == BARRIER and rest:
        count, _, timeout = rest.partition(":")
        try:
            n = int(count)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(
                f"bad barrier count {count!r} in injection action {spec!r}: {_ACTION_HELP}"
            )
        t = _seconds(timeout, "barrier timeout", spec) if timeout else DEFAULT_BARRIER_TIMEOUT
        if t <= 0:
            raise ValueError(f"barrier timeout must be positive in injection action {spec!r}")
        return Action(BARRIER, n=n, timeout=t)
    if kind == ERROR and rest:
        name = rest.upper()
        code = getattr(errno_mod, name, None) if name.startswith("E") else None
        if not isinstance(code, int):
            raise ValueError(f"unknown errno name {rest!r} in injection action {spec!r}")
        return Action(ERROR, errno=code)
    if kind == SCHED and rest:
        if not rest.startswith("/"):
            raise ValueError(f"sched needs an absolute socket path in injection action {spec!r}")
        return Action(SCHED, path=rest)
    raise ValueError(f"bad injection action {spec!r}: {_ACTION_HELP}")


def parse_spec(spec: str) -> tuple[str, Action]:
    """Parse ``POINT=ACTION`` (the argument of ``-o inject=``); ValueError if malformed."""
    point, sep, action = spec.partition("=")
    point = point.strip()
    if not sep or not point:
        raise ValueError(f"bad injection spec {spec!r}: expected POINT=ACTION")
    return point, parse_action(action)


class _Round:
    __slots__ = ("count", "event", "arrivals")

    def __init__(self) -> None:
        self.count = 0
        self.event = trio.Event()
        self.arrivals: list[tuple[object, Task, tuple[str, ...]]] = []


class _Barrier:
    __slots__ = ("n", "timeout", "round", "leaving")

    def __init__(self, n: int, timeout: float) -> None:
        self.n = n
        self.timeout = timeout
        self.round: _Round | None = None
        self.leaving = 0  # tasks of a released round that have not resumed yet

    def release(self, rnd: _Round, resumed_by_caller: bool) -> None:
        if self.round is rnd:
            self.round = None
        self.leaving += rnd.count - (1 if resumed_by_caller else 0)
        rnd.event.set()


class InjectionPoint:
    """One declared point: its action, hit count and waiting tasks."""

    __slots__ = ("name", "description", "action", "hits", "waiting", "_barrier")

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.action = ACTION_OFF
        self.hits = 0
        self.waiting: dict[object, Task] = {}
        self._barrier: _Barrier | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.name,
            "description": self.description,
            "action": str(self.action),
            "hits": self.hits,
            "waiting": [t.to_json() for t in self.waiting.values()],
        }


class InjectionPoints:
    """The injection points of one daemon."""

    def __init__(self, events: EventLog | None = None) -> None:
        self.events = events
        self._points: dict[str, InjectionPoint] = {}

    # -- declaration and configuration -----------------------------------------------------------

    def declare(self, name: str, description: str) -> InjectionPoint:
        """Declare a point (again: update its description, keep its action)."""
        point = self._points.get(name)
        if point is None:
            point = self._points[name] = InjectionPoint(name, description)
        else:
            point.description = description
        return point

    def __contains__(self, name: object) -> bool:
        return name in self._points

    def __getitem__(self, name: str) -> InjectionPoint:
        return self._point(name)

    def names(self) -> list[str]:
        return list(self._points)

    def _point(self, name: str) -> InjectionPoint:
        point = self._points.get(name)
        if point is None:
            known = ", ".join(sorted(self._points)) or "none declared"
            raise ValueError(f"unknown injection point {name!r} (known: {known})")
        return point

    def set(self, name: str, action: str | Action) -> Action:
        """Set the action of point ``name``; releases a round waiting at its old barrier."""
        point = self._point(name)
        parsed = parse_action(action) if isinstance(action, str) else action
        old = point._barrier
        if old is not None and old.round is not None:
            old.release(old.round, resumed_by_caller=False)
        point.action = parsed
        point._barrier = _Barrier(parsed.n, parsed.timeout) if parsed.kind == BARRIER else None
        return parsed

    def configure(self, spec: str) -> tuple[str, Action]:
        """Apply ``POINT=ACTION`` (``-o inject=...``, the ``inject`` control op)."""
        name, action = parse_spec(spec)
        self.set(name, action)
        return name, action

    def reset(self) -> None:
        """Every point off, hit counts zero."""
        for point in self._points.values():
            self.set(point.name, ACTION_OFF)
            point.hits = 0

    # -- hitting ---------------------------------------------------------------------------------

    async def hit(self, name: str) -> None:
        """Apply the point's action to the current task (see the module docstring)."""
        point = self._points.get(name)
        if point is None:
            self._point(name)  # raises the one-line ValueError
            return
        point.hits += 1
        action = point.action
        kind = action.kind
        if kind == OFF:
            return
        if kind == ERROR:
            code = action.errno
            raise OSError(code, f"{os.strerror(code)} [injected at {name}]")
        if kind == DELAY:
            key = object()
            point.waiting[key] = get_current_task()
            try:
                await trio.sleep(action.seconds)
            finally:
                del point.waiting[key]
            return
        if kind == SCHED:
            await self._sched_wait(point, action.path)
            return
        barrier = point._barrier
        assert barrier is not None
        await self._barrier_wait(point, barrier)

    async def _barrier_wait(self, point: InjectionPoint, barrier: _Barrier) -> None:
        if barrier.leaving > 0:
            return  # the previous round is still on its way out: pass through
        rnd = barrier.round
        if rnd is None:
            rnd = barrier.round = _Round()
        key = object()
        task = get_current_task()
        rnd.count += 1
        rnd.arrivals.append((key, task, current_chain()))
        if rnd.count >= barrier.n:
            barrier.release(rnd, resumed_by_caller=True)
            # yield once, so that the N tasks go on from the same scheduling step (lockstep)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        point.waiting[key] = task
        try:
            with trio.move_on_after(barrier.timeout):
                await rnd.event.wait()
            if not rnd.event.is_set():
                self._record_timeout(point, barrier, rnd)
                barrier.release(rnd, resumed_by_caller=True)
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                barrier.leaving -= 1
        except BaseException:
            if rnd.event.is_set():
                barrier.leaving -= 1
            else:
                rnd.count -= 1
                rnd.arrivals = [a for a in rnd.arrivals if a[0] is not key]
                if rnd.count == 0 and barrier.round is rnd:
                    barrier.round = None
            raise
        finally:
            del point.waiting[key]

    async def _sched_wait(self, point: InjectionPoint, path: str) -> None:
        from stackfs.kernel.schedpoint import wait_for_go

        key = object()
        task = get_current_task()
        point.waiting[key] = task
        try:
            await wait_for_go(path, point.name, task, current_chain())
        finally:
            del point.waiting[key]

    def _record_timeout(self, point: InjectionPoint, barrier: _Barrier, rnd: _Round) -> None:
        if self.events is None:
            return
        self.events.record(
            BARRIER_TIMEOUT,
            f"barrier at {point.name} timed out after {barrier.timeout:g} s with "
            f"{rnd.count} of {barrier.n} arrivals",
            [task_json(task, chain) for _, task, chain in rnd.arrivals],
            {"point": point.name, "n": barrier.n, "arrived": rnd.count, "timeout": barrier.timeout},
        )

    # -- snapshot --------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The ``inject`` list of the state snapshot."""
        return [p.to_json() for p in self._points.values()]
