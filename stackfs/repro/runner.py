"""Run a scenario: mount, prepare, run the workload under the watchdog, recover, judge.

One run (:func:`run_once`) is one case of one variant, on a stack of its own:

1. a :class:`~stackfs.runtime.lifecycle.Stack` with a run id of its own; the scenario mounts it
   bottom-up (backends, then the union) and prepares it;
2. the workload's real processes start together (natural mode: another client changes the
   server at a random moment around that start);
3. the watchdog watches every layer until a verdict: every process exited (then it looks once
   more: a modelled event, e.g. an oops, leaves nothing hanging), a hung task (with or without a
   cycle), or a modelled event;
4. recovery: for a finding the watchdog aborts exactly the connections involved, detaches and
   reaps; leftover workload processes are killed by pid; then the stack goes down top-down and
   the runner checks that nothing of the run is mounted or alive;
5. the OBSERVED outcome (``deadlock``, ``oops``, ``completes``, or whatever else was seen) is
   judged against the variant's expectation by :func:`stackfs.repro.outcome.judge` (the one
   verdict, the plugin's and the explorer's too), with the scenario's evidence checks for a
   finding and its data checks (union and branches) for a run that completed.

Each run writes a directory: ``report.txt``/``report.json``/``waitgraph.svg``/``.png`` (the
watchdog's), ``result.json`` and ``summary.txt`` (the runner's), the workload's output and the
daemons' logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackfs.kernel.sched import Schedule, Strategy
from stackfs.linux.proc import alive
from stackfs.repro import schedules
from stackfs.repro.context import Run, SetupError
from stackfs.repro.observe import (
    INSTRUMENTATION,
    Observation,
    TimedAction,
    machine_threshold,
    machine_timeout,
    observe,
    recover_run,
)
from stackfs.repro.outcome import SETUP_ERROR, STILL_RUNNING, Expected, Observed, judge
from stackfs.repro.scenario import (
    FORCED,
    NATURAL,
    SCHEDULED,
    Case,
    Scenario,
    ServerAction,
    Variant,
)
from stackfs.repro.schedserver import RunScheduler
from stackfs.repro.workload import ProcResult, Workload
from stackfs.runtime import control, lifecycle, mountinfo, rundir
from stackfs.runtime.daemon import EXIT_CONNECTION_ABORTED


@dataclass
class RunResult:
    """What one run observed, and how it compares with the expectation."""

    scenario: str
    seed: str
    case: str
    variant: str
    mode: str
    iteration: int
    expected: str
    observed: str = SETUP_ERROR
    matched: bool = False
    #: the variant's bug happened (observed == expected for a buggy variant)
    reproduced: bool = False
    verdict: str | None = None
    summary: str = ""
    #: what is wrong: missing evidence, wrong data, unexpected errors
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    processes: list[ProcResult] = field(default_factory=list)
    #: seconds from the start of the workload to the watchdog's verdict
    time_to_verdict: float | None = None
    #: the watchdog's detection latency (from the last edge of the cycle / the event)
    detection_latency: float | None = None
    latency_from: str | None = None
    #: seconds from the verdict until nothing of the run was left (abort, detach, reap, unmount)
    recovery_seconds: float | None = None
    #: the watchdog's own recovery (abort, detach, reap, verify) for a finding
    watchdog_recovery_seconds: float | None = None
    recovered: bool = False
    recovery_notes: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    total_seconds: float = 0.0
    report_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    #: errno names that workload processes failed with (C-locale messages, exit status)
    errors: list[str] = field(default_factory=list)
    #: earlier attempts of this run that another process disturbed (their summaries)
    disturbed: list[str] = field(default_factory=list)
    #: how each mount of the run went down, with its daemon's exit status and signal
    #: (:class:`stackfs.runtime.lifecycle.UnmountReport`)
    unmounts: list[dict[str, Any]] = field(default_factory=list)
    #: mount points whose FUSE connection this run aborted itself (recovery, unmount)
    aborted_by_run: list[str] = field(default_factory=list)
    #: a scheduled run's schedule (``schedule.json`` in the report directory)
    schedule: dict[str, Any] | None = None
    #: a schedule that could not be followed (a replayed decision whose task never waited)
    schedule_error: str | None = None
    #: the buggy outcome a fix that narrows the window still allows here
    #: (:meth:`Variant.window_for`; None: the fix closes it)
    window: str | None = None
    #: this run showed that outcome, with its evidence: it matches, counted apart
    in_window: bool = False

    @property
    def row(self) -> str:
        return self.scenario if self.case == "default" else f"{self.scenario} ({self.case})"

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["processes"] = [p.to_json() for p in self.processes]
        return d


def _out_dir(
    root: Path, scenario: type[Scenario], variant: Variant, case: Case, index: int
) -> Path:
    parts = [scenario.name, variant.name]
    if len(scenario.cases) > 1:
        parts.append(case.name)
    parts.append(f"{index:03d}")
    return root.joinpath(*parts)


def run_once(
    scenario: type[Scenario],
    variant: str,
    case: str | None = None,
    *,
    mode: str = FORCED,
    index: int = 1,
    report_root: Path | None = None,
    rng: random.Random | None = None,
    threshold: float | None = None,
    keep_scratch: bool = False,
    strategy: Strategy | None = None,
) -> RunResult:
    """One run of ``scenario`` / ``variant`` / ``case`` (see the module docstring). With a
    ``strategy`` the run is scheduled (:data:`SCHEDULED`): natural mode's stack and workload,
    every injection point of every layer under a :class:`RunScheduler` deciding by it. A
    forced run without one replays the row's stored schedule (:func:`schedules.forced`) when
    there is one, else the scenario's barriers force it; its notes say which."""
    t0 = time.monotonic()
    scen = scenario()
    v = scenario.variant(variant)
    c = scenario.case(case) if case else scenario.cases[0]
    forcing: list[str] = []
    run_mode = mode
    if mode == FORCED and strategy is None:
        stored = schedules.forced(scenario.name, v.name, c.name)
        if stored is not None:
            strategy = stored.strategy()
            forcing.append(stored.note())
        else:
            forcing.append("forced by the scenario's barriers (no stored schedule forces this row)")
    if strategy is not None:
        run_mode = SCHEDULED  # natural mode's stack and workload, no barriers
        if not forcing:  # a schedule given by the caller, not forced mode's stored one
            mode = SCHEDULED
    root = report_root or Path(tempfile.mkdtemp(prefix="stackfs-reports-"))
    out = _out_dir(root, scenario, v, c, index)
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = RunResult(
        scenario.name,
        scenario.seed,
        c.name,
        v.name,
        mode,
        index,
        v.expect_for(c.name),
        report_dir=str(out),
        window=v.window_for(c.name),
    )
    scratch = Path(tempfile.mkdtemp(prefix=f"stackfs-{scenario.name}-"))
    run_id = f"repro-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    mountpoints: list[str] = []
    daemons: list[int] = []
    report = None
    work: Workload | None = None
    run: Run | None = None
    obs: Observation | None = None
    try:
        with lifecycle.Stack(run_id=run_id, log_dir=out / "logs") as st:
            run = Run(scen, v, c, run_mode, index, scratch, out, st, rng)
            run.notes.extend(forcing)
            run.notes.append(
                f"the run's processes live in cgroup {st.cgroup.path}"
                if st.cgroup is not None
                else f"{st.cgroup_note}; its processes are reaped by pid"
            )
            try:
                scen.mount(run)
                scen.prepare(run)
            except SetupError as exc:
                result.error = str(exc)
                result.summary = f"set-up failed: {exc}"
            mountpoints = run.mountpoints()
            daemons = [layer.mount.pid for layer in run.layers.values()]
            daemons += [svc.pid for svc in run.services.values()]  # e.g. the DLM
            t_rec = time.monotonic()
            if result.error is None:
                result.setup_seconds = time.monotonic() - t0
                obs = _observe(scen, run, out, threshold, strategy, result)
                report, work = obs.report, obs.workload
                # the data is checked while the stack is up (only when nothing was found)
                seen = _check(result, scen, run, obs)
                t_rec = time.monotonic()
                recover_run(
                    obs,
                    own_conns=[la.mount.conn for la in run.layers.values()],
                    own_pids=[la.mount.pid for la in run.layers.values()],
                )
                if obs.recovery is not None:
                    result.watchdog_recovery_seconds = obs.recovery.seconds
                    result.recovery_notes.extend(obs.recovery.render())
                    result.aborted_by_run += [
                        str(la.mnt)
                        for la in run.layers.values()
                        if la.mount.conn in obs.recovery.aborted
                    ]
                if obs.killed:
                    result.recovery_notes.append(
                        "killed after recovery: " + ", ".join(r.render() for r in obs.killed)
                    )
        # the stack is down (top-down, hung layers aborted): check that nothing is left
        leftovers = _leftovers(mountpoints, daemons, work)
        try:
            left = lifecycle.cleanup(run_id=run_id)
        except rundir.RunDirError as exc:  # an untrusted run root: say so, touch nothing
            left = []
            leftovers.append(f"cleanup refused: {exc}")
        if st.cgroup_killed:  # escaped the runner's reaping by pid (a workload's grandchild)
            result.recovery_notes.append(
                "cgroup.kill reaped what was left in the run's cgroup: pids "
                + ", ".join(map(str, sorted(st.cgroup_killed)))
            )
        if left:
            leftovers.append(
                "cleanup had to remove: " + ", ".join(f"{a.what} {a.mountpoint}" for a in left)
            )
        result.recovery_seconds = time.monotonic() - t_rec
        result.recovered = not leftovers
        result.recovery_notes.extend(leftovers)
        result.recovery_notes.extend(
            f"unmount {r.mountpoint}: "
            + ("clean" if r.clean else "aborted" if r.aborted else "detached")
            + f" in {r.seconds:.3f} s; daemon {r.pid}: {r.daemon_end()}"
            for r in st.reports
        )
        result.unmounts = [r.to_json() for r in st.reports]
        result.aborted_by_run += [r.mountpoint for r in st.reports if r.aborted]
        if obs is None:
            return result  # a set-up error: nothing was observed
        _judge(result, seen, mode, obs)
        result.time_to_verdict = obs.time_to_verdict
        result.detection_latency = obs.report.latency if obs.finding else None
        result.latency_from = obs.report.timing.get("latency_from") if obs.finding else None
        result.summary = result.summary or obs.report.summary
    except SetupError as exc:
        result.error = str(exc)
        result.summary = f"set-up failed: {exc}"
    finally:
        if run is not None:
            result.notes = list(run.notes)
            result.layers = [layer.to_json() for layer in run.layers.values()]
        if work is not None:
            result.processes = list(work.results)
        if report is not None:
            with contextlib.suppress(Exception):
                result.files.update(report.write(out, picture=True))
        result.total_seconds = time.monotonic() - t0
        _write_result(result, out, scenario, report)
        if not keep_scratch:
            _remove_scratch(scratch)
    return result


def _leftovers(
    mountpoints: Iterable[str], daemons: Iterable[int], work: Workload | None
) -> list[str]:
    out = []
    mounted = {e.mountpoint for e in mountinfo.mounts()}
    for mp in mountpoints:
        if mp in mounted:
            out.append(f"still mounted: {mp}")
    for pid in daemons:
        if alive(pid):
            out.append(f"daemon {pid} still alive")
    if work is not None:
        for r in work.results:
            if r.status is None:
                out.append(f"workload process {r.comm}/{r.pid} could not be killed")
    return out


def _observe(
    scen: Scenario,
    run: Run,
    out: Path,
    threshold: float | None,
    strategy: Strategy | None = None,
    result: RunResult | None = None,
) -> Observation:
    """Start the scenario's workload and watch until a verdict (under the run's scheduler
    when there is a ``strategy``: its schedule goes to ``result`` and ``schedule.json``)."""
    if strategy is not None and result is not None:
        return _observe_scheduled(scen, run, out, threshold, strategy, result)
    timed: list[TimedAction] = []
    if not run.forced:
        for ch in scen.concurrent(run):
            off = run.rng.uniform(-scen.natural_window, scen.natural_window)
            timed.append((off, _server_action(run, ch)))
    hung = machine_threshold(threshold, scen.threshold)
    run.notes.append(f"hung-task threshold {hung:g} s")
    obs = _observe_workload(scen, run, out, hung, timed=timed)
    run.notes.extend(obs.notes)
    return obs


def _observe_workload(scen: Scenario, run: Run, out: Path, hung: float, **kw: Any) -> Observation:
    """:func:`observe` of the scenario's workload on the run's mounts, judged with the errors
    the variant explains in this case; ``kw``: how the run is driven (timed actions, gates)."""
    return observe(
        run.mountpoints(),
        scen.workload(run),
        out_dir=out / "workload",
        threshold=hung,
        timeout=machine_timeout(scen.timeout),
        expected_errors=_allowed_errors(run.variant, run.case.name),
        stack=run.stack,
        **kw,
    )


def _observe_scheduled(
    scen: Scenario,
    run: Run,
    out: Path,
    threshold: float | None,
    strategy: Strategy,
    result: RunResult,
) -> Observation:
    daemons = {la.mount.pid: la.role for la in run.layers.values()}
    daemons.update({svc.pid: kind for kind, svc in run.services.items()})
    hung = machine_threshold(threshold, scen.threshold)
    run.notes.append(f"hung-task threshold {hung:g} s")
    actions = scen.concurrent(run)
    rs = RunScheduler(strategy, daemons)
    with rs:
        try:
            points = rs.attach(run.mountpoints(), [svc.pid for svc in run.services.values()])
        except (control.ControlError, OSError, KeyError) as exc:
            raise SetupError(
                f"could not put the injection points under the scheduler: {exc}"
            ) from exc
        run.notes.append(f"scheduled points: {', '.join(points) or 'none'}")

        def started(work: Workload) -> None:
            rs.set_workload([(r.pid, r.comm) for r in work.results])
            for i, r in enumerate(work.results):
                rs.actor(f"w{i}.{r.comm}", "start", _open_gate(work, i))
            for i, ch in enumerate(actions):
                rs.actor(f"s{i}.{ch.role}-{ch.action}", "server", _server_action(run, ch))

        obs = _observe_workload(
            scen,
            run,
            out,
            hung,
            on_start=started,
            gated=True,
        )
        schedule = rs.close()
    schedule.meta.update(
        {
            "scenario": scen.name,
            "variant": run.variant.name,
            "case": run.case.name,
            "strategy": getattr(strategy, "name", type(strategy).__name__.lower()),
            "settle": rs.sched.settle,
        }
    )
    result.schedule = schedule.to_json()
    schedule.write(out / "schedule.json")
    result.files["schedule"] = str(out / "schedule.json")
    if rs.sched.error is not None:
        result.schedule_error = str(rs.sched.error)
    if abandoned := getattr(strategy, "abandoned", None):
        run.notes.append(f"schedule: {abandoned}")
    run.notes.extend(rs.notes)
    run.notes.extend(obs.notes)
    return obs


def _allowed_errors(v: Variant, case: str) -> frozenset[str]:
    """The errno names the variant explains in ``case``: its expectation's and its window's."""
    return Expected(v.expect_for(case), v.window_for(case)).explained_errors


def _open_gate(work: Workload, i: int):
    def act() -> str:
        work.open_gate(i)
        return f"{work.results[i].label} starts"

    return act


def _server_action(run: Run, ch: ServerAction):
    def act() -> str:
        return f"another client: {run.server(ch.role, ch.action, *ch.args)}"

    return act


def _check(result: RunResult, scen: Scenario, run: Run, obs: Observation) -> Observed:
    """While the stack is up: what the run saw, with the scenario's evidence checks for a
    finding of the expected kind and its data checks for a run in which every process exited
    and nothing was found."""
    problems: list[str] = []
    if obs.finding:
        if obs.verdict in (result.expected, result.window):
            problems = scen.evidence(run, obs.report.to_json())
    elif obs.workload.poll():
        problems = scen.verify(run, obs.workload.results)
    return obs.seen(problems)


def _judge(result: RunResult, seen: Observed, mode: str, obs: Observation) -> None:
    """:func:`~stackfs.repro.outcome.judge` what the run saw (with its schedule and its
    recovery) against the variant's expectation in this case; the result says it."""
    seen = dataclasses.replace(
        seen,
        schedule_error=result.schedule_error,
        recovered=result.recovered,
        recovery_notes=tuple(result.recovery_notes),
    )
    j = judge(seen, Expected(result.expected, result.window, rate=mode == NATURAL))
    result.verdict = obs.verdict
    result.observed = j.observed
    result.errors = list(j.errors)
    result.problems = list(j.problems)
    result.matched, result.reproduced, result.in_window = j.matched, j.reproduced, j.in_window
    if obs.finding:
        result.summary = obs.report.summary
    elif j.observed == STILL_RUNNING:
        result.summary = "no finding, but the workload was still running at the end: " + "; ".join(
            r.render() for r in obs.workload.results if not r.exited
        )
    elif j.errors:
        # a real process saw an errno: that is the outcome, whatever the variant expected
        seen_by = [r.render() for r in obs.workload.results if not r.ok]
        result.summary = (
            "a real process saw " + ", ".join(j.errors) + ": " + "; ".join(seen_by + list(j.found))
        )
    else:
        fine = "every process exited as it should and the data is right"
        result.summary = "; ".join(j.found) if j.found else fine


def _write_result(result: RunResult, out: Path, scenario: type[Scenario], report) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=1, default=str) + "\n")
    lines = [
        f"{result.row}: variant {result.variant}, {result.mode} mode, run {result.iteration}",
        f"seed {scenario.seed}: {scenario.summary}",
        "",
        f"expected: {result.expected}"
        + (f" (narrows the window: {result.window})" if result.window else ""),
        f"observed: {result.observed}"
        + (" (in the window the fix leaves)" if result.in_window else "")
        + (" (matches)" if result.matched else " (MISMATCH)"),
        f"  {result.summary}",
    ]
    lines += [f"  problem: {p}" for p in result.problems]
    if result.error:
        lines.append(f"set-up error: {result.error}")
    if result.notes:
        lines += ["", "what was done:"] + [f"  - {n}" for n in result.notes]
    if result.processes:
        lines += ["", "workload:"] + [f"  {p.render()}" for p in result.processes]
    if result.schedule is not None:
        sched = Schedule.from_json(result.schedule)
        lines += [
            "",
            f"schedule ({len(sched.decisions)} decisions, key {sched.key()}, schedule.json):",
        ]
        lines += [f"  {line}" for line in sched.render()]
    lines += ["", "timing:"]
    if result.time_to_verdict is not None:
        lines.append(f"  workload start to verdict: {result.time_to_verdict:.3f} s")
    if result.detection_latency is not None:
        lines.append(
            f"  detection latency: {result.detection_latency:.3f} s (from {result.latency_from})"
        )
    if result.recovery_seconds is not None:
        lines.append(
            f"  recovery: {result.recovery_seconds:.3f} s, "
            f"{'complete' if result.recovered else 'INCOMPLETE'}"
        )
    lines += [f"  {n}" for n in result.recovery_notes]
    if report is not None:
        lines += [
            "",
            "the watchdog's report: report.txt, report.json"
            + (", waitgraph.svg, waitgraph.png" if "svg" in result.files else ""),
        ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    result.files["summary"] = str(out / "summary.txt")
    result.files["result"] = str(out / "result.json")


def _remove_scratch(scratch: Path) -> None:
    """Remove the scratch directory, unless something is (still) mounted below it."""
    prefix = str(scratch) + "/"
    if any(e.mountpoint.startswith(prefix) for e in mountinfo.mounts()):
        return
    shutil.rmtree(scratch, ignore_errors=True)


def disturbed(r: RunResult) -> bool:
    """Someone else aborted one of this run's FUSE connections: positive evidence only.

    The machine is shared, and a recovery elsewhere that aborts by connection number can hit a
    reused one. The evidence is a daemon of the run that exited with
    :data:`~stackfs.runtime.daemon.EXIT_CONNECTION_ABORTED` (its session ended under a live mount
    and
    nobody signalled it) on a mount whose connection the run itself did not abort (neither its
    recovery nor its unmount). ENOTCONN in a process's stderr is no evidence: a daemon that
    crashes makes its callers see the same, and that is the run's own failure (the daemon then
    exits 1, with its own status, or by a signal).
    """
    if r.verdict not in (None, "ok", "error", *INSTRUMENTATION):
        return False
    return any(
        u.get("exit_status") == EXIT_CONNECTION_ABORTED
        and u.get("exit_signal") is None
        and u.get("mountpoint") not in r.aborted_by_run
        for u in r.unmounts
    )


def run_with_retries(
    scenario: type[Scenario], variant: str, case: str | None = None, attempts: int = 3, **kw: Any
) -> RunResult:
    """:func:`run_once`, repeated (up to ``attempts`` in all) while another process disturbed
    it; the disturbed attempts are listed in the result (``disturbed``)."""
    notes: list[str] = []
    while True:
        r = run_once(scenario, variant, case, **kw)
        if not disturbed(r) or len(notes) + 1 >= attempts:
            r.disturbed = notes
            return r
        outside = [
            u["mountpoint"] for u in r.unmounts if u.get("exit_status") == EXIT_CONNECTION_ABORTED
        ]
        notes.append(
            f"attempt {len(notes) + 1} disturbed (the connection of "
            f"{', '.join(outside)} was aborted from outside; its daemon exited "
            f"{EXIT_CONNECTION_ABORTED}): {r.error or r.summary} [{r.report_dir}]"
        )
        if r.report_dir:
            old = Path(r.report_dir)
            with contextlib.suppress(OSError):
                old.rename(old.with_name(old.name + f"-disturbed-{len(notes)}"))


# -- many runs ------------------------------------------------------------------------------------

Progress = Callable[[int, int, RunResult], None]


@dataclass
class Plan:
    """Which runs: scenario, variants, cases, mode, iterations."""

    scenario: type[Scenario]
    variants: list[str]
    cases: list[str]
    mode: str = FORCED
    iterations: int = 1

    @property
    def total(self) -> int:
        return len(self.variants) * len(self.cases) * self.iterations


def plan(
    scenario: type[Scenario],
    variant: str | None = None,
    case: str | None = None,
    natural: bool = False,
    iterations: int = 1,
) -> Plan:
    variants = [scenario.variant(variant).name] if variant else [v.name for v in scenario.variants]
    cases = [scenario.case(case).name] if case else [c.name for c in scenario.cases]
    return Plan(scenario, variants, cases, NATURAL if natural else FORCED, iterations)


def run_plan(
    p: Plan,
    report_root: Path,
    progress: Progress | None = None,
    seed: int | None = None,
    threshold: float | None = None,
    done_before: int = 0,
    total: int | None = None,
    schedule: Schedule | None = None,
) -> list[RunResult]:
    """Every run of ``p``, in order variant, case, iteration; with ``schedule``, each a
    scheduled run replaying it."""
    from stackfs.kernel.sched import Replay

    rng = random.Random(seed)
    results = []
    n = done_before
    for variant in p.variants:
        for case in p.cases:
            for i in range(1, p.iterations + 1):
                r = run_with_retries(
                    p.scenario,
                    variant,
                    case,
                    mode=p.mode,
                    index=i,
                    report_root=report_root,
                    rng=rng,
                    threshold=threshold,
                    strategy=Replay(schedule) if schedule is not None else None,
                )
                results.append(r)
                n += 1
                if progress is not None:
                    progress(n, total or p.total, r)
    return results
