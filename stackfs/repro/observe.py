"""Run a workload under the watchdog until a verdict; recover after a finding.

:func:`observe` starts the real processes, applies timed actions around their start (another
client changing the server, in natural mode), and polls the watchdog until every process has
exited (then it looks once more: an oops leaves nothing hanging), a task hangs, or a modelled
event is reported. A timed-out barrier of ours is instrumentation, not a finding: the watching
goes on. :func:`recover_run` aborts, detaches and reaps what the finding involves, then kills any
workload process that is still there, by its pid.
"""

from __future__ import annotations

import errno as errno_mod
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stackfs.repro.outcome import DEADLOCK, Observed, failures
from stackfs.repro.scenario import Proc
from stackfs.repro.workload import ProcResult, Workload

if TYPE_CHECKING:
    from stackfs.runtime.lifecycle import Stack
    from stackfs.watchdog import Watchdog
    from stackfs.watchdog.recover import Recovery
    from stackfs.watchdog.report import Report

#: watchdog verdicts that are the testbed's own instrumentation, not a finding about the stack:
#: a barrier that timed out because the variant serialises what it tried to force together
INSTRUMENTATION = ("barrier_timeout",)

#: modelled lock events that, while the workload is still blocked, announce a hang
LOCK_EVENTS = ("recursive_locking", "lock_inversion")

#: (seconds relative to the workload's start, action returning a line for the notes)
TimedAction = tuple[float, Callable[[], str]]


@dataclass
class Observation:
    """What the watchdog saw while the workload ran."""

    watchdog: Watchdog
    report: Report
    workload: Workload
    #: wall-clock time of the verdict (the report's, or the last process's exit)
    t_verdict: float | None
    notes: list[str] = field(default_factory=list)
    recovery: Recovery | None = None
    killed: list[ProcResult] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return str(self.report.verdict)

    @property
    def finding(self) -> bool:
        """The watchdog found something about the stack (not only our instrumentation)."""
        return bool(self.report.found) and self.verdict not in INSTRUMENTATION

    @property
    def all_exited(self) -> bool:
        return all(r.exited for r in self.workload.results)

    @property
    def time_to_verdict(self) -> float | None:
        return self.t_verdict - self.workload.started if self.t_verdict else None

    def seen(self, problems: Sequence[str] = ()) -> Observed:
        """What was seen, for :func:`stackfs.repro.outcome.judge` (the runner's and the
        plugin's alike; before recovery, which kills what is left): the watchdog's finding;
        else whether every process exited, and those that did not exit as they should.
        ``problems``: what the caller's checks found wrong (evidence, data)."""
        if self.finding:
            return Observed(self.verdict, problems=tuple(problems))
        if not self.workload.poll():
            return Observed(None, exited=False)
        return Observed(None, failed=failures(self.workload.results), problems=tuple(problems))


def machine_threshold(threshold: float | None, default: float = 1.0) -> float:
    """The hung-task threshold of a run: an explicit ``threshold`` (``--threshold``) as given,
    else ``default`` (the scenario's) times :func:`stackfs.runtime.service.timeout_factor`, so a
    task
    that a slow machine (a TCG guest: 5) keeps waiting on a daemon that is still working is
    not taken for hung. Buggy variants block for good, so their verdicts do not change."""
    if threshold is not None:
        return threshold
    from stackfs.runtime.service import timeout_factor

    return default * timeout_factor()


def machine_timeout(seconds: float) -> float:
    """A workload's time limit on this machine (``seconds`` times the timeout factor)."""
    from stackfs.runtime.service import timeout_factor

    return seconds * timeout_factor()


def observe(
    mounts: Sequence[str | os.PathLike[str]],
    specs: Sequence[Proc],
    *,
    out_dir: Path,
    threshold: float = 1.0,
    timeout: float = 20.0,
    timed: Sequence[TimedAction] = (),
    env: dict[str, str] | None = None,
    expected_errors: Iterable[str] = (),
    on_start: Callable[[Workload], None] | None = None,
    gated: bool = False,
    stack: Stack | None = None,
) -> Observation:
    """Start ``specs`` and watch ``mounts`` until a verdict (see the module docstring).

    ``expected_errors``: errno names (``"ENOENT"``) that the variant's bug makes a process see
    (an ``error:ENAME`` outcome): a process failing with one of them is not reported to the
    watchdog as an unexpected error; the runner judges it. ``on_start`` is called once every
    process has started (a scheduled run learns the workload's pids); ``gated``: the
    processes wait to exec until ``on_start``'s caller opens their gates
    (:meth:`Workload.start`). ``stack``: the run's :class:`~stackfs.runtime.lifecycle.Stack`; its
    cgroup takes the workload's processes, and the watchdog sees only that run (its cgroup,
    else its run id: :class:`~stackfs.watchdog.scope.RunScope`)."""
    from stackfs.watchdog import Watchdog
    from stackfs.watchdog.scope import RunScope

    cg = stack.cgroup if stack is not None else None
    scope = RunScope(stack.run_id, cg.path if cg else None) if stack is not None else None
    wd = Watchdog(mounts=[os.fspath(m) for m in mounts], threshold=threshold, scope=scope)
    work = Workload(out_dir)
    notes: list[str] = []
    actions = sorted(timed, key=lambda a: a[0])
    for off, act in (a for a in actions if a[0] < 0):
        notes.append(f"{-off * 1000:.1f} ms before the workload: {act()}")
        time.sleep(-off)
    work.start(list(specs), env=env, gated=gated, cgroup=cg)
    if on_start is not None:
        on_start(work)
    elapsed = 0.0
    for off, act in (a for a in actions if a[0] >= 0):
        time.sleep(max(0.0, off - elapsed))
        elapsed = off
        notes.append(f"{off * 1000:.1f} ms after the workload started: {act()}")
    reported: set[int] = set()
    expected = set(expected_errors)

    def stop() -> bool:
        if not work.poll():
            return False
        for r in work.results:
            if r.ok or r.pid in reported or r.errno is None:
                continue
            if errno_mod.errorcode.get(r.errno) in expected:
                continue  # the variant's bug, seen by a real process: the runner's verdict
            reported.add(r.pid)
            wd.workload_error(
                r.pid,
                r.comm,
                os.path.basename(r.argv[0]),
                r.argv[-1] if len(r.argv) > 1 else None,
                r.errno,
                expected="success",
                message=r.stderr.strip().splitlines()[-1],
            )
        return True

    deadline = time.monotonic() + timeout
    while True:
        report = wd.run(timeout=max(0.1, deadline - time.monotonic()), stop=stop)
        if report.verdict in INSTRUMENTATION and not stop() and time.monotonic() < deadline:
            notes.append(f"instrumentation: {report.summary}")
            continue  # a barrier of ours timed out: keep watching the workload
        if report.verdict in LOCK_EVENTS and not stop():
            report = _confirm_hang(wd, report, stop, threshold, notes)
        break
    obs = Observation(wd, report, work, None, notes)
    if obs.finding:
        obs.t_verdict = report.time
    elif work.poll() and work.results:
        obs.t_verdict = max(r.ended or 0.0 for r in work.results)
    if report.verdict in INSTRUMENTATION:
        notes.append(f"instrumentation: {report.summary}")
    return obs


def _confirm_hang(wd, first, stop: Callable[[], bool], threshold: float, notes: list[str]):
    """A lock event came while the workload is still blocked: watch a little longer (one more
    threshold) for the hang it causes, and report both together; if the workload gets going
    again, the event alone is the finding."""
    later = wd.run(timeout=threshold + 0.5, stop=stop)
    if later.found and later.verdict in (DEADLOCK, "hang"):
        later.events = list(first.events) + [e for e in later.events if e not in first.events]
        notes.append(
            f"the watchdog reported {first.verdict} first, then the hang it causes "
            f"({later.verdict}); both are in the report"
        )
        return later
    return first


def recover_run(
    obs: Observation,
    own_conns: Iterable[int] | None = None,
    own_pids: Iterable[int] | None = None,
    grace: float = 1.0,
) -> Observation:
    """After a finding: the watchdog's recovery (abort the connections involved, detach, reap
    the daemons, verify); then kill the workload processes that are left.

    ``own_conns``: the FUSE connections of the stack under test. Recovery touches only those of
    the report's connections (the machine is shared: a report's wait-for graph may show other
    stacks' daemons too, and aborting their connections would break someone else's run).
    ``own_pids``: the stack's daemons; with the workload's processes, the only tasks whose
    release recovery verifies.
    """
    if obs.finding:
        from stackfs.watchdog.recover import recover_connections

        report = obs.report
        conns = set(report.involved_conns())
        tids = list(report.involved_tids())
        if own_conns is not None:
            conns &= set(own_conns)
            tids = _own_tids(
                report, tids, conns, set(own_pids or ()) | {r.pid for r in obs.workload.results}
            )
        wd = obs.watchdog
        obs.recovery = recover_connections(conns, tids, scanner=wd.scanner, grace=wd.grace)
        report.recovery = obs.recovery
    obs.killed = obs.workload.reap(grace=grace if obs.finding else 0.3)
    return obs


def _own_tids(report: object, tids: list[int], conns: set[int], pids: set[int]) -> list[int]:
    """Those of ``tids`` that belong to our processes or wait on our connections."""
    graph = getattr(report, "graph", None)
    tasks = getattr(graph, "tasks", {}) if graph is not None else {}
    out = []
    for tid in tids:
        t = tasks.get(tid)
        if t is None or t.pid in pids or t.tid in pids or t.conn in conns:
            out.append(tid)
    return out
