"""Schedules: which task held at a scheduled injection point goes next.

The testbed cannot own the kernel's scheduler, but it owns its injection points. A point whose
action is ``sched`` (:mod:`stackfs.kernel.inject`) holds every arriving task until the run's
:class:`Scheduler` releases it. The scheduler decides only when the run is *quiescent* (every
workload task is held at a point, blocked in the kernel, or gone: the caller says so), or, as a
fallback, when nothing arrived or left for ``settle`` seconds; each decision records which.

This is CHESS's idea (Musuvathi et al., OSDI 2008: a schedule is the list of choices, so a found
bug replays) with the choice made by a :class:`Strategy`:

:class:`FreeRun`
    the earliest arrival goes first (no choice: what a run without the scheduler would do);
:class:`Replay`
    a :class:`Schedule` read from a file: step N releases the task the file names (a step the
    file leaves out is left to the free run); a decision that cannot be taken is a
    :class:`ScheduleError` within ``replay_wait`` seconds, never a hang;
:class:`PCT`
    probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): random task priorities,
    the highest-priority waiting task goes, and at ``depth - 1`` random steps the task about to
    go is demoted below every other;
:class:`Prefix` with :class:`DFS`
    bounded depth-first enumeration: every run follows a prefix of choices then takes the first
    waiting label in sorted order (a task passed over :data:`FAIR_BOUND` decisions in a row
    goes first: fairness); :meth:`DFS.next` backtracks to the deepest step with an
    untried alternative, so every order of the decisions up to ``max_depth`` is run once.

Labels are stable across runs: ``TASK@POINT#N``, TASK the workload process's role (its index
and command, or a server action's), POINT the daemon's role and the point, N the how-manieth
arrival of that task at that point. Never a pid or a request id. This module is pure (threads,
no sockets): :mod:`stackfs.repro.schedserver` puts it behind a unix socket for the daemons of a
run, and the in-process tests drive it with threads.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: how a decision was taken: the run was quiescent, or the settle bound ran out first
QUIESCENT = "quiescent"
SETTLE = "settle"

SCHEDULE_FORMAT = 1
DEFAULT_SETTLE = 0.25
DEFAULT_REPLAY_WAIT = 2.0
#: DFS's fairness bound: after its prefix, a task passed over this many decisions in a row
#: goes next (see :class:`Prefix`)
FAIR_BOUND = 4


class ScheduleError(Exception):
    """A schedule cannot be followed (a decision names a task that is not waiting), or a
    schedule file is malformed. One line."""


def label(task: str, point: str, n: int) -> str:
    """``TASK@POINT#N``: the stable name of a task's N-th arrival at a point."""
    return f"{task}@{point}#{n}"


def task_of(lab: str) -> str:
    """The TASK part of a label."""
    return lab.partition("@")[0]


@dataclass(frozen=True)
class Decision:
    """Step ``step``: ``go`` was released out of ``waiting`` (arrival order).

    ``forced``: the strategy chose (False: left to the free run, the earliest arrival)."""

    step: int
    go: str
    waiting: tuple[str, ...]
    by: str = QUIESCENT
    forced: bool = True

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"step": self.step, "go": self.go, "waiting": list(self.waiting)}
        if self.by != QUIESCENT:
            d["by"] = self.by
        if not self.forced:
            d["forced"] = False
        return d

    @property
    def choice(self) -> bool:
        """Whether there was anything to choose (more than one task waiting)."""
        return len(self.waiting) > 1


@dataclass
class Schedule:
    """A list of decisions and what it was run on (``meta``: scenario, variant, case,
    strategy, seed, settle). The file is JSON a person can read and edit: a replay needs only
    each decision's ``step`` and ``go``."""

    decisions: list[Decision] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def forced(self) -> list[Decision]:
        """The decisions a replay must take (those with a choice that the strategy made)."""
        return [d for d in self.decisions if d.forced and d.choice]

    def key(self) -> str:
        """A short hash of the order of releases: two runs with the same key interleaved the
        scheduled points the same way."""
        text = "\n".join(d.go for d in self.decisions)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": SCHEDULE_FORMAT,
            **self.meta,
            "decisions": [d.to_json() for d in self.decisions],
        }

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    def render(self) -> list[str]:
        """One line per decision: ``step 3: go w1.cat@nfs:nfs_atomic_open#1 (of 2 waiting)``."""
        out = []
        for d in self.decisions:
            how = "" if d.forced else ", free run"
            how += "" if d.by == QUIESCENT else f", after the {d.by} bound"
            out.append(f"step {d.step}: go {d.go} (of {len(d.waiting)} waiting{how})")
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "schedule") -> Schedule:
        if not isinstance(data, dict) or not isinstance(data.get("decisions"), list):
            raise ScheduleError(f"{where}: expected a JSON object with a 'decisions' list")
        decisions: list[Decision] = []
        last = 0
        for i, d in enumerate(data["decisions"], 1):
            step, go = (d.get("step"), d.get("go")) if isinstance(d, dict) else (None, None)
            if not isinstance(step, int) or not isinstance(go, str) or step <= last:
                raise ScheduleError(
                    f"{where}: decision {i} must have an increasing integer 'step' and a "
                    f"'go' label, not {json.dumps(d)}"
                )
            waiting = d.get("waiting") or [go]
            if not isinstance(waiting, list) or not all(isinstance(w, str) for w in waiting):
                raise ScheduleError(f"{where}: decision {i}: 'waiting' must be a list of labels")
            decisions.append(
                Decision(
                    step,
                    go,
                    tuple(waiting),
                    str(d.get("by", QUIESCENT)),
                    bool(d.get("forced", True)),
                )
            )
            last = step
        meta = {k: v for k, v in data.items() if k not in ("decisions", "schedule")}
        return cls(decisions, meta)

    @classmethod
    def read(cls, path: Path) -> Schedule:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ScheduleError(f"{path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ScheduleError(f"{path}: not JSON ({exc})") from exc
        return cls.from_json(data, str(path))


# -- strategies ----------------------------------------------------------------------------------


class Strategy(Protocol):
    """Chooses who goes at a step: ``(label, forced)``, or None when its choice is not (yet)
    waiting (a replay)."""

    def choose(self, step: int, waiting: Sequence[str]) -> tuple[str, bool] | None: ...


class FreeRun:
    """The earliest arrival goes first."""

    name = "free"

    def choose(self, step: int, waiting: Sequence[str]) -> tuple[str, bool] | None:
        return waiting[0], False


#: what a replay does with a decision whose label never comes (a schedule file's ``unreached``):
#: the schedule is wrong for this run (a one-line error), or the run did not go that way and
#: the rest of the schedule is left to the free run
UNREACHED_ERROR = "error"
UNREACHED_FREE_RUN = "free-run"
UNREACHED = (UNREACHED_ERROR, UNREACHED_FREE_RUN)


class Replay:
    """Follow a schedule's forced decisions; the steps it leaves out are left to the free run.
    A decision's ``go`` is released once every label that waited when it was recorded waits
    again (the kernel's timing may bring a task to its point later under load; releasing
    before it arrives would replay another state), or ``patience`` seconds after ``go`` came.

    ``unreached`` (default: the schedule file's ``unreached``, else ``error``) says what a
    decision whose label is not waiting means: with ``error`` the schedule fails
    (:class:`ScheduleError`) after the scheduler's ``replay_wait``; with ``free-run`` the
    replay stops there after the scheduler's ``settle`` bound and every later step is left to
    the free run (:attr:`abandoned` says where): a
    variant that never reaches a point of the schedule (a fix that takes another path) runs
    on as far as it goes."""

    name = "replay"

    def __init__(
        self,
        schedule: Schedule,
        unreached: str | None = None,
        patience: float = DEFAULT_SETTLE,
    ) -> None:
        self.by_step = {d.step: d.go for d in schedule.decisions if d.forced}
        self.last = max(self.by_step, default=0)
        # who else waited when the decision was recorded: a replay releases ``go`` once they
        # wait again (the same state), or after ``patience`` seconds without them
        self.recorded = {d.step: frozenset(d.waiting) for d in schedule.decisions if d.forced}
        self.patience = patience
        self._held: dict[int, float] = {}
        self.unreached = unreached or str(schedule.meta.get("unreached", UNREACHED_ERROR))
        if self.unreached not in UNREACHED:
            raise ScheduleError(
                f"unreached must be one of {', '.join(UNREACHED)}, not {self.unreached!r}"
            )
        self.abandoned: str | None = None

    def choose(self, step: int, waiting: Sequence[str]) -> tuple[str, bool] | None:
        go = self.by_step.get(step)
        if go is None:
            return waiting[0], False
        if go not in waiting:
            return None
        if not self.recorded.get(step, frozenset()) <= set(waiting):
            first = self._held.setdefault(step, time.monotonic())
            if time.monotonic() - first < self.patience:
                return None
        return go, True

    def wants(self, step: int) -> str | None:
        return self.by_step.get(step)

    def give_up(self, step: int, waiting: Sequence[str]) -> bool:
        """Decision ``step``'s label did not come: True (the rest is left to the free run)
        when the replay's ``unreached`` is ``free-run``, False (an error) otherwise."""
        if self.unreached != UNREACHED_FREE_RUN or self.by_step.get(step) in waiting:
            return False
        self.abandoned = (
            f"decision {step} ({self.by_step.get(step)}) was not reached (waiting: "
            f"{', '.join(waiting)}): the rest of the schedule was left to the free run"
        )
        self.by_step = {}
        return True


class PCT:
    """PCT with ``depth`` (d) and ``steps`` (k, the expected number of decisions): every task
    gets a random priority >= d when first seen; at each of d-1 change steps drawn from 1..k,
    the highest-priority waiting task drops to priority i (below every initial one) before the
    choice. A bug of depth d is found with probability >= 1/(n k^(d-1)) per run."""

    name = "pct"

    def __init__(self, seed: int, depth: int = 2, steps: int = 8) -> None:
        self.rng = random.Random(seed)
        self.depth = max(1, depth)
        k = max(1, steps)
        picks = self.rng.sample(range(1, k + 1), min(self.depth - 1, k))
        self.change = {step: i for i, step in enumerate(sorted(picks), 1)}
        self.priority: dict[str, float] = {}

    def _prio(self, task: str) -> float:
        if task not in self.priority:
            self.priority[task] = self.depth + self.rng.random()
        return self.priority[task]

    def choose(self, step: int, waiting: Sequence[str]) -> tuple[str, bool] | None:
        if step in self.change:
            top = max(waiting, key=lambda w: self._prio(task_of(w)))
            self.priority[task_of(top)] = float(self.change[step])
        return max(waiting, key=lambda w: self._prio(task_of(w))), True


class Prefix:
    """Follow ``gos`` (one label per step), then the first waiting label in sorted order,
    unless a task has been passed over :data:`FAIR_BOUND` decisions in a row: then the task
    passed over longest goes (fair stateless model checking, Musuvathi and Qadeer, PLDI 2008:
    an unfair order is pruned, not run). Without it one task arriving at point after point
    holds another at its point past the hung-task threshold, and the watchdog reports that
    task hung once it blocks after its release (its FUSE request's wait counts from its
    start). A prefix label that is not waiting (the run went differently) is noted in
    ``diverged``."""

    name = "dfs"

    def __init__(self, gos: Sequence[str]) -> None:
        self.gos = list(gos)
        self.diverged: int | None = None
        #: task -> decisions in a row it waited at a point while another went
        self.passed: dict[str, int] = {}

    def choose(self, step: int, waiting: Sequence[str]) -> tuple[str, bool] | None:
        go: str | None = None
        if step <= len(self.gos):
            if self.gos[step - 1] in waiting:
                go = self.gos[step - 1]
            elif self.diverged is None:
                self.diverged = step
        if go is None:
            starved = [w for w in waiting if self.passed.get(task_of(w), 0) >= FAIR_BOUND]
            go = max(starved, key=lambda w: self.passed[task_of(w)]) if starved else None
            go = go or sorted(waiting)[0]
        tasks = {task_of(w) for w in waiting}
        self.passed = {t: self.passed.get(t, 0) + 1 for t in tasks if t != task_of(go)}
        return go, True


class DFS:
    """Bounded depth-first enumeration of the orders of the decisions (stateless, as CHESS
    re-executes): :meth:`next` gives the prefix of the next run from the decisions of the last
    one, or None when every order up to ``max_depth`` choices has been run."""

    def __init__(self, max_depth: int = 12) -> None:
        self.max_depth = max_depth
        self.started = False

    def first(self) -> Prefix:
        self.started = True
        return Prefix([])

    def next(self, last: Sequence[Decision]) -> Prefix | None:
        path = [d for d in last if d.step <= self.max_depth]
        for i in range(len(path) - 1, -1, -1):
            options = sorted(path[i].waiting)
            at = options.index(path[i].go) if path[i].go in options else len(options)
            if at + 1 < len(options):
                return Prefix([d.go for d in path[:i]] + [options[at + 1]])
        return None


# -- the scheduler -------------------------------------------------------------------------------


class Ticket:
    """One arrival: released by the scheduler (``go`` set)."""

    __slots__ = ("label", "go", "arrived")

    def __init__(self, lab: str) -> None:
        self.label = lab
        self.go = threading.Event()
        self.arrived = time.monotonic()


class Scheduler:
    """Tasks arrive at points (:meth:`arrive`) and wait (:meth:`wait`); :meth:`drive` releases
    them one at a time, by ``strategy``, when ``quiescent()`` says the run is quiescent or
    nothing moved for ``settle`` seconds. Thread-safe. After :meth:`close` (the run is over, or
    the schedule failed: ``error``) every waiting task is released and arrivals pass through.

    A released task has not moved until it has taken its go (:meth:`wait` returned, or its
    server says so: :meth:`taken`): the go of a daemon's task goes out over a socket, from a
    thread the machine may not run at once, and until then neither the task nor anything it
    wakes is running. No decision is taken while a release is on its way (neither by
    quiescence nor by the settle bound), and :attr:`moves` counts every arrival, release,
    take and withdrawal, so that a caller's quiescence starts afresh after each."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        settle: float = DEFAULT_SETTLE,
        replay_wait: float = DEFAULT_REPLAY_WAIT,
        max_steps: int = 200,
    ) -> None:
        self.strategy = strategy
        self.settle = settle
        self.replay_wait = replay_wait
        self.max_steps = max_steps
        self.decisions: list[Decision] = []
        self.error: ScheduleError | None = None
        self.closed = False
        self._waiting: list[Ticket] = []
        #: released, the go not yet taken by the task
        self._going: set[Ticket] = set()
        #: every arrival, release, take and withdrawal (a caller's quiescence restarts on it)
        self.moves = 0
        self._hits: dict[tuple[str, str], int] = {}
        self._cond = threading.Condition()
        self._moved = time.monotonic()
        self._stuck_since: float | None = None

    # -- the tasks' side -----------------------------------------------------------------------

    def arrive(self, task: str, point: str) -> Ticket:
        """Task ``task`` reached ``point``: its ticket (already released once closed)."""
        with self._cond:
            n = self._hits[(task, point)] = self._hits.get((task, point), 0) + 1
            t = Ticket(label(task, point, n))
            if self.closed:
                t.go.set()
            else:
                self._waiting.append(t)
                self._moved = time.monotonic()
                self.moves += 1
                self._cond.notify_all()
            return t

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """Wait for ``ticket``'s go (True) and take it (:meth:`taken`); False on timeout."""
        if not ticket.go.wait(timeout):
            return False
        self.taken(ticket)
        return True

    def taken(self, ticket: Ticket) -> None:
        """The task of a released ``ticket`` has its go and runs on (a server: the go was
        delivered): the scheduler may decide again once the run is quiescent."""
        with self._cond:
            if ticket in self._going:
                self._going.discard(ticket)
                self._moved = time.monotonic()
                self.moves += 1
                self._cond.notify_all()

    def waiting(self) -> list[str]:
        with self._cond:
            return [t.label for t in self._waiting]

    def withdraw(self, ticket: Ticket) -> None:
        """The task of ``ticket`` stopped waiting without a decision (its request was
        interrupted, its daemon died): it is no longer a choice."""
        with self._cond:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._moved = time.monotonic()
                self.moves += 1
                self._cond.notify_all()

    def left(self) -> None:
        """Something moved that the scheduler does not see (a task exited): restart the
        settle bound."""
        with self._cond:
            self._moved = time.monotonic()
            self.moves += 1
            self._cond.notify_all()

    # -- the deciding side ---------------------------------------------------------------------

    def step(self, quiescent: bool) -> Decision | None:
        """Take one decision if it is time (see the class docstring); None if not (also while
        a released task has not taken its go)."""
        with self._cond:
            if self.closed or not self._waiting:
                self._stuck_since = None
                return None
            if self._going:  # a released task has not taken its go: the run has not moved
                return None
            now = time.monotonic()
            settled = now - self._moved >= self.settle
            if not quiescent and not settled:
                return None
            by = QUIESCENT if quiescent else SETTLE
            labels = [t.label for t in self._waiting]
            n = len(self.decisions) + 1
            chosen = self.strategy.choose(n, labels)
            # the limit gives back a run the strategy drives without end; the free run (a
            # replay past its file: the earliest arrival, no choice) is bounded by the
            # scenario's timeout, as a run without the scheduler
            if chosen is not None and chosen[1] and self._choices() >= self.max_steps:
                self._fail(f"more than {self.max_steps} decisions: giving the run back")
                return None
            if chosen is None:
                self._stuck_since = self._stuck_since or now
                stuck = now - self._stuck_since
                # a replay that may give up does so after the settle bound (a task blocked
                # behind a held one must not be held up to the hung-task threshold)
                give_up = getattr(self.strategy, "give_up", None)
                if stuck >= self.settle and give_up is not None and give_up(n, labels):
                    self._stuck_since = None
                    return None  # the rest is left to the free run: decide again
                if stuck < self.replay_wait:
                    return None
                want = getattr(self.strategy, "wants", lambda _s: None)(n)
                self._fail(
                    f"decision {n} of the schedule cannot be taken: {want} is not waiting "
                    f"after {self.replay_wait:g} s (waiting: {', '.join(labels)})"
                )
                return None
            self._stuck_since = None
            go, forced = chosen
            d = Decision(n, go, tuple(labels), by, forced)
            self.decisions.append(d)
            ticket = next(t for t in self._waiting if t.label == go)
            self._waiting.remove(ticket)
            self._going.add(ticket)
            self._moved = now
            self.moves += 1
            ticket.go.set()
            return d

    def _choices(self) -> int:
        """The decisions the strategy took so far (the free run's not counted)."""
        return sum(1 for d in self.decisions if d.forced)

    def _fail(self, message: str) -> None:
        self.error = ScheduleError(message)
        self._release_all()

    def _release_all(self) -> None:
        self.closed = True
        for t in self._waiting:
            t.go.set()
        self._waiting.clear()
        self._going.clear()
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._release_all()

    def drive(
        self, quiescent: Callable[[Sequence[str]], bool], stop: threading.Event, poll: float = 0.002
    ) -> None:
        """Decide until ``stop`` is set or the scheduler is closed. ``quiescent(waiting)``
        is asked only while some task waits."""
        while not stop.is_set() and not self.closed:
            labels = self.waiting()
            if labels:
                self.step(quiescent(labels))
            with self._cond:
                self._cond.wait(poll)

    def schedule(self, meta: dict[str, Any] | None = None) -> Schedule:
        with self._cond:
            return Schedule(list(self.decisions), dict(meta or {}))


def forced_subset(schedule: Schedule, keep: Iterable[Decision]) -> Schedule:
    """``schedule`` with only the decisions ``keep`` forced (the rest left to the free run),
    as ddmin removes them."""
    kept = {d.step for d in keep}
    return Schedule([d for d in schedule.decisions if d.step in kept], dict(schedule.meta))


def minimise(
    schedule: Schedule, fails: Callable[[Schedule], bool], max_tests: int = 24
) -> tuple[Schedule, int]:
    """ddmin (Zeller and Hildebrandt, TSE 2002) over the forced decisions of a failing
    ``schedule``: the fewest that still make ``fails`` true, a removed decision being left to
    the free run. At most ``max_tests`` calls of ``fails`` (each one run); returns the smallest
    failing schedule found and the number of runs it took."""
    items = schedule.forced()
    cache: dict[frozenset[int], bool] = {}
    tests = 0

    def test(keep: list[Decision]) -> bool:
        nonlocal tests
        key = frozenset(d.step for d in keep)
        if key not in cache:
            if tests >= max_tests:
                return False
            tests += 1
            cache[key] = fails(forced_subset(schedule, keep))
        return cache[key]

    if test([]):
        return forced_subset(schedule, []), tests
    n = 2
    while len(items) >= 2 and tests < max_tests:
        size = -(-len(items) // n)
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        for part in parts:
            if test(part):
                items, n = part, max(n - 1, 2)
                break
        else:
            for part in parts:
                rest = [d for d in items if d not in part]
                if test(rest):
                    items, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(len(items), 2 * n)
    if len(items) == 1 and test([]):
        items = []
    return forced_subset(schedule, items), tests
