"""``stackfs explore``: a scenario's workload under many schedules, each run judged as today.

Every run is a scheduled run (:func:`stackfs.repro.runner.run_once` with a strategy): natural
mode's stack and workload, none of the scenario's forcing, every injection point of every layer
under the run's scheduler (:mod:`stackfs.repro.schedserver`), another client's server change a
scheduled task of its own. The watchdog judges each run exactly as it judges a forced one.

Strategies (:mod:`stackfs.kernel.sched`): ``dfs`` (the default: bounded depth-first
enumeration of the orders of the first 4*D decisions, each once; it ends early when every such
order was run, which for most seeds' workloads is a few runs: an exhaustive verdict) and
``pct`` (run I uses PCT with seed SEED+I and ``--depth`` D, its step count k the most decisions
a run has taken so far: for spaces larger than the budget).

A run's outcome is one of: the variant's bug (``bug``), it completed with the right data
(``completes``), or something else (``other``: a hang where an oops was expected, a wrong
result, an error). The exploration of a variant in a case *matches* when every run is ``bug``
or ``completes``, at least one is ``bug`` for a buggy variant, and none is ``bug`` for a fixed
one (for a fixed variant any run that does not complete fails). A fix that only narrows the
window (``Variant.window``, e.g. nfs-atomic-open's ``fixed``) may also show the bug's outcome it
allows (``window``, with its evidence): such runs match, and are counted and reported apart.

The first failing schedule (a buggy variant's first ``bug``, a fixed variant's first run that
did not complete, a window run included) is minimised by ddmin over its forced decisions
(:func:`minimise`: a removed decision is left to the free run; a candidate is kept when
:data:`CONFIRM` replays in a row fail the same way) and written as ``minimised.json``;
``stackfs repro run SCENARIO --variant V --case C --schedule minimised.json`` replays it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackfs.cli import CLIError
from stackfs.kernel.sched import DFS, PCT, Replay, Schedule, Strategy, minimise
from stackfs.repro import harness, ktap, registry
from stackfs.repro.outcome import (
    BUG,
    COMPLETES,
    ERROR,
    FAIL,
    OK,
    OTHER,
    PASS,
    SETUP_ERROR,
    SKIP,
    WINDOW,
)
from stackfs.repro.runner import RunResult, run_with_retries
from stackfs.repro.scenario import Scenario
from stackfs.repro.stats import classify

STRATEGIES = ("dfs", "pct")
DEFAULT_BUDGET = 20
DEFAULT_DEPTH = 3
#: ddmin's candidates at most, per minimised schedule
MINIMISE_RUNS = 12
#: runs of a candidate that must all fail for ddmin to keep it
CONFIRM = 2


@dataclass
class Exploration:
    """The runs of one variant in one case."""

    scenario: str
    variant: str
    case: str
    expected: str
    strategy: str
    seed: int
    runs: list[RunResult] = field(default_factory=list)
    seconds: float = 0.0
    #: index (1-based) and seconds from the start of the first failing run
    first_failure: int | None = None
    first_failure_seconds: float | None = None
    minimised: Schedule | None = None
    minimise_runs: int = 0
    minimised_path: str | None = None
    #: the buggy outcome a fix that narrows the window still allows (``Variant.window``)
    window: str | None = None

    @property
    def is_bug(self) -> bool:
        return self.expected != COMPLETES

    def outcomes(self) -> Counter[str]:
        return Counter(r.observed for r in self.runs)

    def kinds(self) -> Counter[str]:
        return Counter(classify(r) for r in self.runs)

    def distinct(self) -> int:
        return len({Schedule.from_json(r.schedule).key() for r in self.runs if r.schedule})

    def failing(self, r: RunResult) -> bool:
        kind = classify(r)
        return kind == BUG if self.is_bug else kind != OK

    @property
    def matched(self) -> bool:
        kinds = self.kinds()
        if not self.runs or kinds[OTHER] or any(r.observed == SETUP_ERROR for r in self.runs):
            return False
        return kinds[BUG] > 0 if self.is_bug else kinds[BUG] == 0

    def verdict(self) -> str:
        k = self.kinds()
        n = len(self.runs)
        if self.is_bug:
            if k[BUG]:
                return f"bug found in {k[BUG]} of {n} schedules (first: run {self.first_failure})"
            return f"bug NOT found in {n} schedules"
        if self.first_failure is None:
            return f"completed in all {n} schedules"
        if k[WINDOW] and not k[OTHER]:
            return (
                f"completed in {k[OK]} of {n} schedules, {self.window} in {k[WINDOW]}: the "
                f"window the fix leaves (first: run {self.first_failure})"
            )
        return f"FAILED in {n - k[OK]} of {n} schedules (first: run {self.first_failure})"

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "case": self.case,
            "expected": self.expected,
            "window": self.window,
            "in_window": self.kinds()[WINDOW],
            "strategy": self.strategy,
            "seed": self.seed,
            "runs": len(self.runs),
            "distinct_schedules": self.distinct(),
            "outcomes": dict(self.outcomes()),
            "matched": self.matched,
            "seconds": round(self.seconds, 3),
            "first_failure": self.first_failure,
            "first_failure_seconds": self.first_failure_seconds,
            "minimised": self.minimised.to_json() if self.minimised else None,
            "minimise_runs": self.minimise_runs,
            "minimised_path": self.minimised_path,
            "reports": [r.report_dir for r in self.runs],
        }


class _Strategies:
    """The strategy of each run of an exploration."""

    def __init__(self, name: str, seed: int, depth: int) -> None:
        self.name, self.seed, self.depth = name, seed, depth
        self.dfs = DFS(max_depth=depth * 4) if name == "dfs" else None
        self.steps = 8
        self.last: RunResult | None = None
        self.done = False

    def next(self, i: int) -> Strategy | None:
        last = Schedule.from_json(self.last.schedule) if self.last and self.last.schedule else None
        if last is not None:
            self.steps = max(self.steps, len(last.decisions))
        if self.dfs is None:
            return PCT(self.seed + i, depth=self.depth, steps=self.steps)
        if i == 1:
            return self.dfs.first()
        nxt = self.dfs.next(last.decisions if last else [])
        if nxt is None:
            self.done = True
        return nxt


def explore(
    scenario: type[Scenario],
    variant: str,
    case: str,
    *,
    report_root: Path,
    strategy: str = "dfs",
    budget: int | None = DEFAULT_BUDGET,
    time_limit: float | None = None,
    seed: int = 0,
    depth: int = DEFAULT_DEPTH,
    minimise_runs: int = MINIMISE_RUNS,
    threshold: float | None = None,
    progress=None,
) -> Exploration:
    """Explore ``variant`` in ``case`` (see the module docstring)."""
    v = scenario.variant(variant)
    ex = Exploration(scenario.name, v.name, case, v.expect_for(case), strategy, seed)
    ex.window = v.window_for(case)
    strategies = _Strategies(strategy, seed, depth)
    root = report_root / "runs"
    t0 = time.monotonic()
    i = 0
    while True:
        i += 1
        if budget is not None and i > budget:
            break
        if time_limit is not None and time.monotonic() - t0 >= time_limit:
            break
        strat = strategies.next(i)
        if strat is None:
            break
        r = run_with_retries(
            scenario,
            variant,
            case,
            index=i,
            report_root=root,
            threshold=threshold,
            strategy=strat,
        )
        strategies.last = r
        ex.runs.append(r)
        if ex.first_failure is None and ex.failing(r):
            ex.first_failure = i
            ex.first_failure_seconds = time.monotonic() - t0
        if progress is not None:
            progress(ex, r)
        if r.observed == SETUP_ERROR:
            break
    ex.seconds = time.monotonic() - t0
    first = ex.runs[ex.first_failure - 1] if ex.first_failure else None
    if first is not None and first.schedule and minimise_runs > 0:
        failing = Schedule.from_json(first.schedule)
        ex.minimised, ex.minimise_runs = minimise_failing(
            scenario,
            variant,
            case,
            failing,
            first.observed,
            report_root=report_root,
            minimise_runs=minimise_runs,
            threshold=threshold,
        )
        ex.minimised.meta["minimised_from"] = first.files.get("schedule")
        path = report_root / "minimised.json"
        ex.minimised.write(path)
        ex.minimised_path = str(path)
    return ex


def minimise_failing(
    scenario: type[Scenario],
    variant: str,
    case: str,
    failing: Schedule,
    want: str,
    *,
    report_root: Path,
    minimise_runs: int = MINIMISE_RUNS,
    threshold: float | None = None,
) -> tuple[Schedule, int]:
    """ddmin over the forced decisions of ``failing`` (a schedule whose replay gives the
    outcome ``want``): the smallest schedule found whose replay still gives ``want``
    :data:`CONFIRM` times in a row, and the number of runs it took (their reports under
    ``report_root/minimise``). Used by :func:`explore` and ``bench/minimise_schedule.py``."""
    tries = 0

    def fails(candidate: Schedule) -> bool:
        """The candidate gives the failure twice in a row (a decision left to the free
        run is the earliest arrival, which the kernel's timing may change)."""
        nonlocal tries
        for _ in range(CONFIRM):
            tries += 1
            r = run_with_retries(
                scenario,
                variant,
                case,
                index=tries,
                report_root=report_root / "minimise",
                threshold=threshold,
                strategy=Replay(candidate),
            )
            if r.observed != want or r.schedule_error:
                return False
        return True

    small, _candidates = minimise(failing, fails, max_tests=minimise_runs)
    small.meta.update(failing.meta)
    return small, tries


# -- the command ----------------------------------------------------------------------------------


def _line(ex: Exploration, r: RunResult, total: int | None) -> str:
    sched = Schedule.from_json(r.schedule) if r.schedule else None
    forced = len(sched.forced()) if sched else 0
    of = f"/{total}" if total else ""
    t = f" in {r.time_to_verdict:.2f} s" if r.time_to_verdict is not None else ""
    return (
        f"  {r.iteration}{of} {ex.variant}"
        + (f" ({ex.case})" if ex.case != "default" else "")
        + f": {r.observed} [{classify(r)}]{t}; "
        + (
            f"schedule {sched.key()}, {len(sched.decisions)} decisions, {forced} choices"
            if sched
            else "no schedule"
        )
        + (f"; {r.schedule_error}" if r.schedule_error else "")
    )


def report_lines(ex: Exploration) -> list[str]:
    outcomes = ", ".join(f"{k} {n}" for k, n in sorted(ex.outcomes().items()))
    lines = [
        f"{ex.scenario} / {ex.variant}"
        + (f" ({ex.case})" if ex.case != "default" else "")
        + f": expected {ex.expected}"
        + (f" (narrows the window: {ex.window})" if ex.window else "")
        + f"; {len(ex.runs)} runs, {ex.distinct()} distinct schedules, "
        f"{ex.seconds:.1f} s ({ex.strategy}, seed {ex.seed})",
        f"  outcomes: {outcomes or 'none'}",
        f"  verdict: {ex.verdict()} -> {'matches' if ex.matched else 'DOES NOT MATCH'}",
    ]
    if ex.first_failure is not None:
        first = ex.runs[ex.first_failure - 1]
        lines.append(
            f"  first failing schedule: run {ex.first_failure}, after "
            f"{ex.first_failure_seconds:.1f} s: {first.files.get('schedule')}"
        )
        for text in Schedule.from_json(first.schedule or {"decisions": []}).render():
            lines.append(f"    {text}")
    if ex.minimised is not None:
        lines.append(
            f"  minimised ({ex.minimise_runs} runs): {len(ex.minimised.decisions)} forced "
            f"decisions, {ex.minimised_path}"
        )
        lines += [f"    {text}" for text in ex.minimised.render()]
        lines.append(
            f"  replay: stackfs repro run {ex.scenario} --variant {ex.variant}"
            + (f" --case {ex.case}" if ex.case != "default" else "")
            + f" --schedule {ex.minimised_path}"
        )
    return lines


def cmd_explore(args: argparse.Namespace) -> int:
    try:
        scenario = registry.get(args.name)
        if (note := scenario.alias_note(args.variant)) is not None:
            print(f"note: {note}", file=sys.stderr)
        variants = (
            [scenario.variant(args.variant).name]
            if args.variant
            else [v.name for v in scenario.variants]
        )
        cases = [scenario.case(args.case).name] if args.case else [c.name for c in scenario.cases]
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\""), status=2) from None
    if args.budget is not None and args.budget < 1:
        raise CLIError("--budget must be at least 1", status=2)
    budget = args.budget if args.budget is not None or args.time else DEFAULT_BUDGET
    why = scenario.unsupported()
    if why is not None:
        print(f"{scenario.name}: SKIP: cannot run here: {why}")
        skips = [
            ktap.Test(f"{scenario.name}/{c}/{v}/explore", SKIP, why)
            for v in variants
            for c in cases
        ]
        ktap.write(args, skips)
        return harness.EXIT_SKIP
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.report_dir or f"reports/explore-{scenario.name}-{stamp}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"report directory {root}: {exc.strerror}", status=2) from None
    print(
        f"{scenario.name} (seed {scenario.seed}): exploring {len(variants)} variant(s) x "
        f"{len(cases)} case(s), strategy {args.strategy}, "
        + (f"budget {budget} runs" if budget else "")
        + (f"{', ' if budget else ''}{args.time:g} s each" if args.time else "")
        + f"; reports in {root}/",
        flush=True,
    )

    def progress(ex: Exploration, r: RunResult) -> None:
        print(_line(ex, r, budget), flush=True)

    results: list[Exploration] = []
    for v in variants:
        for c in cases:
            sub = root / v / c if len(cases) > 1 else root / v
            ex = explore(
                scenario,
                v,
                c,
                report_root=sub,
                strategy=args.strategy,
                budget=budget,
                time_limit=args.time,
                seed=args.seed,
                depth=args.depth,
                minimise_runs=0 if args.no_minimise else MINIMISE_RUNS,
                threshold=args.threshold,
                progress=progress,
            )
            results.append(ex)
            print("\n".join(report_lines(ex)), flush=True)
    (root / "explore.json").write_text(
        json.dumps(
            {"command": " ".join(sys.argv), "explorations": [e.to_json() for e in results]},
            indent=1,
        )
        + "\n"
    )
    ktap.write(args, [ktap_test(e) for e in results])
    if any(r.observed == SETUP_ERROR for e in results for r in e.runs):
        print("set-up error", flush=True)
        return 2
    ok = all(e.matched for e in results)
    print(
        (
            "every exploration matched its variant's expectation"
            if ok
            else "some explorations did NOT match"
        )
        + f"; reports in {root}/"
    )
    return 0 if ok else 1


def ktap_test(ex: Exploration) -> ktap.Test:
    """An exploration as a KTAP test (``--ktap``): its runs nested, each passing unless it is
    ``other`` (:func:`~stackfs.repro.outcome.kind`); it passes when it matched."""
    runs = []
    for r in ex.runs:
        t = ktap.run_test(r, f"run {r.iteration}")
        if t.status == FAIL and classify(r) != OTHER:
            t.status = PASS  # a schedule that did not show the bug, or the window a fix leaves
        t.diagnostics[0] += f" [{classify(r)}]"
        runs.append(t)
    name = f"{ex.scenario}/{ex.case}/{ex.variant}/explore"
    status = ERROR if any(t.status == ERROR for t in runs) else PASS if ex.matched else FAIL
    return ktap.Test(name, status, "set-up error" if status == ERROR else "", [ex.verdict()], runs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="run a scenario under many schedules of its injection points",
        description="Run scenario NAME's workload with its forcing off and every injection "
        "point of every layer under a scheduler, many times, with a different schedule each "
        "time (bounded DFS or PCT), each run judged by the watchdog. Prints a line per run, "
        "then the outcomes, the first failing schedule and that schedule minimised (ddmin). "
        "Exit status: 0 when every exploration matched its variant's expectation (a buggy "
        "variant's bug was found and nothing else happened; a fixed variant completed in "
        "every schedule, or showed only the bug's outcome its expectation says it narrows "
        "the window for), 1 when not, 2 on a set-up error, 4 when the scenario cannot run here.",
    )
    p.add_argument("name", metavar="SCENARIO")
    p.add_argument("--variant", metavar="V", help="one variant (default: all)")
    p.add_argument("--case", metavar="C", help="one case (default: all)")
    p.add_argument(
        "--budget",
        type=int,
        metavar="N",
        help=f"runs per variant and case (default {DEFAULT_BUDGET} unless --time is given)",
    )
    p.add_argument("--time", type=float, metavar="S", help="seconds per variant and case")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="dfs",
        help="dfs: every order of the first 4*D decisions once (default); pct: random "
        "priorities with D-1 change points, for spaces larger than the budget",
    )
    p.add_argument("--seed", type=int, default=0, help="PCT's seed (run I uses SEED+I)")
    p.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        metavar="D",
        help=f"PCT's bug depth d: d-1 priority change points (default {DEFAULT_DEPTH}); "
        "DFS branches over the first 4*D decisions",
    )
    p.add_argument("--no-minimise", action="store_true", help="do not minimise the failure")
    p.add_argument("--report-dir", metavar="DIR", help="default reports/explore-NAME-TIMESTAMP")
    p.add_argument(
        "--threshold",
        type=float,
        metavar="S",
        help="seconds before a blocked task counts as hung (default: the scenario's)",
    )
    ktap.add_option(p, "one result per variant and case, its runs nested")
    p.epilog = harness.KSELFTEST_HELP
    p.set_defaults(func=ktap.command(cmd_explore))
