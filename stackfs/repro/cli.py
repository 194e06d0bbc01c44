"""``stackfs repro list|run`` and ``stackfs demo``.

``stackfs repro run`` exits 0 when every run's observed outcome matched its variant's
expectation, 1 when one did not, 2 on a set-up error (a layer that would not mount, a prepare
step that failed) or a bad command line, 4 when the scenario cannot run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stackfs.cli import CLIError
from stackfs.kernel.sched import Schedule, ScheduleError
from stackfs.repro import harness, ktap, outcome, registry
from stackfs.repro.outcome import COMPLETES
from stackfs.repro.present import ProgressBar, Style, seconds, table, wrap
from stackfs.repro.runner import RunResult, plan, run_plan
from stackfs.repro.scenario import NATURAL, SCHEDULED
from stackfs.repro.stats import OK, Summary, classify, median, summarize

DEFAULT_REPORTS = "reports"


def _scenario(name: str):
    try:
        return registry.get(name)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\""), status=2) from None


def _report_root(arg: str | None, prefix: str) -> Path:
    if arg:
        root = Path(arg)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(DEFAULT_REPORTS) / f"{prefix}-{stamp}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"report directory {root}: {exc.strerror}", status=2) from None
    return root


def _status(results: list[RunResult], summaries: list[Summary] | None = None) -> int:
    """2 on a set-up error; 1 when a run did not match, or a batch failed its variant
    (:attr:`Summary.failure`: in natural mode a buggy variant that never reproduced, or a run
    that neither reproduced the bug nor completed correctly); else 0."""
    statuses = [outcome.status(r.observed, r.matched) for r in results]
    if outcome.ERROR in statuses:
        return 2
    if not results or outcome.FAIL in statuses:
        return 1
    return 1 if any(s.failure for s in summaries or ()) else 0


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def _leftover_mounts() -> list[str]:
    """Testbed mounts left by this process's runs (their run ids start with repro-PID-)."""
    from stackfs.runtime import mountinfo, rundir

    prefix = f"repro-{os.getpid()}-"
    infos = rundir.all_infos()
    out = []
    for e in mountinfo.testbed_mounts():
        info = infos.get(e.daemon_pid) if e.daemon_pid is not None else None
        if info is not None and str(info.get("run_id", "")).startswith(prefix):
            out.append(e.mountpoint)
    return out


# -- list -----------------------------------------------------------------------------------------


def _expect_text(scenario, v) -> str:
    """What variant ``v`` must show: one outcome, or one per case where they differ."""
    if v.per_case:
        return ", ".join(f"{c.name}: {v.expect_text(c.name)}" for c in scenario.cases)
    return v.expect_text(scenario.cases[0].name)


def cmd_list(args: argparse.Namespace) -> int:
    st = Style(sys.stdout)
    for s in registry.scenarios():
        print(f"{st.bold(s.name)}  (seed {s.seed})  {s.summary}")
        if len(s.cases) > 1:
            for c in s.cases:
                print(f"    case {c.name}: {c.summary}")
        width = max(len(v.name) for v in s.variants)
        for v in s.variants:
            exp = _expect_text(s, v)
            print(f"    variant {v.name:<{width}}  -> {exp:<9}  {v.summary}")
        if args.verbose:
            print(wrap(s.description, indent="    "))
        print()
    return 0


# -- show -----------------------------------------------------------------------------------------


def show_lines(scenario) -> list[str]:
    """``stackfs repro show``: per variant, what it stands for (the scenario's one
    :attr:`~stackfs.repro.scenario.Scenario.history` table) and what it must show."""
    out = [f"{scenario.name} (seed {scenario.seed}): {scenario.summary}"]
    for v in scenario.variants:
        h = scenario.history.get(v.name)
        out.append(f"  variant {v.name} -> {_expect_text(scenario, v)}")
        if h is None:
            out.append("    history: not declared")
            continue
        out.append(f"    kernels: {h.kernels}")
        out.append(f"    commit:  {h.commit or '-'}")
        out.append(f"    mirrors: {', '.join(h.mirrors)}")
        if h.note:
            out.append(wrap(h.note, indent="    "))
    for old, new in scenario.variant_aliases.items():
        out.append(f"  alias {old} -> {new} (the old name still works)")
    return out


def cmd_show(args: argparse.Namespace) -> int:
    for line in show_lines(_scenario(args.name)):
        print(line)
    return 0


def alias_note(scenario, variant: str | None) -> None:
    """Say on stderr that ``variant`` is an old name (the run goes on under the new one)."""
    note = scenario.alias_note(variant)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)


# -- run ------------------------------------------------------------------------------------------


def _line(r: RunResult, st: Style) -> str:
    mark = st.green("ok") if r.matched else st.red("MISMATCH")
    t = f"  in {seconds(r.time_to_verdict)}" if r.reproduced else ""
    if r.mode == NATURAL and r.expected != COMPLETES and classify(r) == OK:
        t = "  (the bug did not happen this time)"
    if r.in_window:
        t = "  (in the window the fix leaves)"
    again = f"  (repeated {len(r.disturbed)}x: disturbed from outside)" if r.disturbed else ""
    return (
        f"{r.row} / {r.variant} [{r.mode} #{r.iteration}]: expected {r.expected}, "
        f"observed {r.observed}{t}  {mark}{again}"
    )


def _summary_headers(natural: bool) -> list[str]:
    headers = ["scenario", "variant", "expected"]
    if natural:  # a natural batch: N = reproduced + completed + other
        headers += ["runs", "reproduced", "completed", "other", "rate", "per min"]
    else:
        headers += ["observed", "matched"]
    return headers + ["time to reproduce", "detection latency", "recovered"]


def _summary_rows(summaries: list[Summary], st: Style, natural: bool) -> list[list[str]]:
    rows = []
    for s in summaries:
        mark = st.green("✓") if s.failure is None else st.red("✗")
        rate = f"{s.rate:.0f}/100" if s.is_bug and s.rate is not None else "-"
        per_min = f"{s.per_minute:.1f}" if s.is_bug and s.per_minute is not None else "-"
        row = [s.row, s.variant, s.expected]
        if natural:
            other = str(s.other) + (f" ({s.others_text()})" if s.other else "")
            shown = str(s.reproduced) if s.is_bug else "-"
            if s.window:  # a fix that narrows the window: its runs in the window, their rate
                shown = f"{s.in_window} in the window ({s.window})"
                rate = f"{s.window_rate:.0f}/100" if s.window_rate is not None else "-"
            row += [
                f"{s.runs} {mark}",
                shown,
                str(s.completed),
                other,
                rate,
                per_min,
            ]
        else:
            row += [f"{s.observed_text()} {mark}", f"{s.matched}/{s.runs}"]
        row += [
            seconds(median(s.time_to_reproduce)) if s.is_bug else "-",
            seconds(median(s.detection_latency)),
            f"{s.recovered}/{s.runs}" + (f" ({seconds(median(s.recovery))})" if s.recovery else ""),
        ]
        rows.append(row)
    return rows


def _schedule_arg(args: argparse.Namespace, scenario, p) -> Schedule | None:
    """``--schedule FILE``: the schedule to replay (one variant and case, not natural)."""
    if not args.schedule:
        return None
    if args.natural:
        raise CLIError("--schedule and --natural exclude each other", status=2)
    if len(p.variants) != 1 or len(p.cases) != 1:
        raise CLIError(
            "--schedule replays one variant in one case: give --variant"
            + (" and --case" if len(scenario.cases) > 1 else ""),
            status=2,
        )
    try:
        sched = Schedule.read(Path(args.schedule))
    except ScheduleError as exc:
        raise CLIError(str(exc), status=2) from None
    p.mode = SCHEDULED
    return sched


def cmd_run(args: argparse.Namespace) -> int:
    scenario = _scenario(args.name)
    alias_note(scenario, args.variant)
    try:
        p = plan(scenario, args.variant, args.case, args.natural, args.iterations)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\""), status=2) from None
    if args.iterations < 1:
        raise CLIError("--iterations must be at least 1", status=2)
    schedule = _schedule_arg(args, scenario, p)
    why = scenario.unsupported()
    if why is not None:  # kselftest's skip: exit 4 with the reason
        print(f"{scenario.name}: SKIP: cannot run here: {why}")
        if args.junit:
            harness.write_junit(
                args.junit,
                f"stackfs repro run {scenario.name}",
                [],
                harness.skipped_cases(p, why),
                0.0,
            )
        ktap.write(args, ktap.skipped(p, why))
        return harness.EXIT_SKIP
    root = _report_root(args.report_dir, f"{scenario.name}")
    st = Style(sys.stdout)
    bar = ProgressBar(p.total)
    quiet_lines = bar.enabled and p.total > 1
    t0 = time.monotonic()

    def progress(done: int, total: int, r: RunResult) -> None:
        if args.kmsg and (err := harness.kmsg_run(r)):
            print(f"stackfs repro run: --kmsg: {err}", file=sys.stderr)
        if quiet_lines and r.matched:
            bar.show(done, f"{r.row} {r.variant} #{r.iteration}: {r.observed}")
            return
        bar.clear()
        print(_line(r, st), flush=True)
        if not r.matched:
            for prob in r.problems or [r.error or r.summary]:
                print(f"    {prob}")
            print(f"    report: {r.report_dir}")
        if r.schedule is not None:
            print(f"    schedule ({r.files.get('schedule')}):")
            for line in Schedule.from_json(r.schedule).render():
                print(f"      {line}")

    print(
        f"{scenario.name} (seed {scenario.seed}): {p.total} run"
        f"{'s' if p.total != 1 else ''}, {p.mode} mode; reports in {root}/",
        flush=True,
    )
    bar.show(0, "mounting...")
    try:
        results = run_plan(
            p, root, progress, seed=args.seed, threshold=args.threshold, schedule=schedule
        )
    finally:
        bar.clear()
    summaries = summarize(results)
    print()
    print(table(_summary_headers(args.natural), _summary_rows(summaries, st, args.natural)))
    print()
    status = _status(results, summaries)
    for s in summaries:
        if s.failure is not None:
            print(f"{st.red('✗')} {s.row} / {s.variant}: {s.verdict()}")
        elif args.natural:  # every natural batch says its counts and rate
            print(f"{st.green('✓')} {s.row} / {s.variant}: {s.verdict()}")
    verdict = {
        0: (
            "every natural batch matched its variant's expectation"
            if args.natural
            else "every run matched its expectation"
        ),
        1: (
            "a natural batch did NOT match its variant's expectation"
            if args.natural
            else "some runs did NOT match their expectation"
        ),
        2: "set-up error",
    }[status]
    print(f"{verdict}; reports in {root}/")
    payload = {
        "command": "repro run",
        "scenario": scenario.name,
        "mode": p.mode,
        "report_dir": str(root),
        "status": status,
        "summary": [s.to_json() for s in summaries],
        "runs": [r.to_json() for r in results],
    }
    _write_json(root / "results.json", payload)
    if args.json:
        _write_json(Path(args.json), payload)
    if args.junit:
        harness.write_junit(
            args.junit,
            f"stackfs repro run {scenario.name}",
            results,
            seconds=time.monotonic() - t0,
            batches=summaries if args.natural else (),
        )
    ktap.write(
        args,
        ktap.batches(results, summaries) if args.natural else [ktap.run_test(r) for r in results],
    )
    return status


# -- demo -----------------------------------------------------------------------------------------


#: the lines of a kernel backtrace that are no frame (``dump_stack()``'s markers)
_TRACE_MARKS = ("Call Trace:", "<TASK>", "</TASK>")


def excerpt(text: str) -> list[str]:
    """The lines of a watchdog report that tell the story at a glance: the hung tasks, the
    lockdep headline with the lock taken twice, the wait-for cycle and the model's backtrace;
    for an oops, the BUG line, RIP, the call trace and the racing tasks."""
    lines = text.splitlines()
    out: list[str] = []
    done: set[str] = set()

    def once(key: str) -> bool:
        if key in done:
            return False
        done.add(key)
        return True

    def following(i: int, n: int | None = None) -> list[str]:
        block: list[str] = []
        for ln in lines[i + 1 :]:
            if not ln.strip() or (n is not None and len(block) >= n):
                break
            block.append(ln.rstrip())
        return block

    for i, ln in enumerate(lines):
        s = ln.strip()
        if s.startswith("INFO: task ") or (
            s.startswith("task ") and " blocked in an interruptible FUSE wait " in s
        ):
            out.append(s)
        elif s.startswith("WARNING: possible") and once("warning"):
            out.append(s)
        elif s.endswith("is trying to acquire lock:") and once("acquire"):
            out += [ln.rstrip(), *following(i, 1)]
        elif s == "but task is already holding lock:" and once("holding"):
            out += [ln.rstrip(), *following(i, 1)]
        elif s == "the wait-for cycle:" and once("cycle"):
            out += [ln.rstrip(), *following(i, 6)]
        elif s.startswith("stack backtrace") and once("backtrace"):
            frames = [f.strip() for f in following(i, 9) if f.strip() not in _TRACE_MARKS][:6]
            out.append("model backtrace: " + " <- ".join(frames))
        elif s.startswith("kernel BUG at") and once("bug"):
            out.append(s)
        elif s.startswith("PID: ") and " Comm: " in s and once("pid"):
            out.append(s)
        elif s.startswith("RIP: ") and once("rip"):
            out.append(s)
        elif s == "Call Trace:" and "bug" in done and once("trace"):
            frames = [
                f.strip()
                for f in following(i)
                if not f.strip().startswith(("[", "---")) and f.strip() not in _TRACE_MARKS
            ]
            out.append("Call Trace: " + " <- ".join(frames))
        elif s.startswith("racing tasks") and once("racing"):
            tasks = [
                ln2.split("COMMAND:")[1].strip().strip('"') + "/" + ln2.split()[1]
                for ln2 in lines[i + 1 :]
                if ln2.startswith("PID: ") and "COMMAND:" in ln2
            ]
            out.append("racing tasks: " + ", ".join(dict.fromkeys(tasks)))
    return out


def _demo_rows(results: list[RunResult], st: Style) -> list[list[str]]:
    rows = []
    for r in results:
        ok = st.green("✓") if r.matched else st.red("✗ MISMATCH")
        if r.recovered:
            rec = (
                f"yes ({seconds(r.recovery_seconds)})"
                if r.reproduced or r.observed != COMPLETES
                else "clean unmount"
            )
        else:
            rec = st.red("NO")
        rows.append(
            [
                r.row,
                r.variant,
                r.expected,
                f"{r.observed} {ok}",
                seconds(r.time_to_verdict) if r.reproduced else "-",
                seconds(r.detection_latency) if r.detection_latency is not None else "-",
                rec,
            ]
        )
    return rows


def cmd_demo(args: argparse.Namespace) -> int:
    st = Style(sys.stdout)
    root = _report_root(args.report_dir, "demo")
    scenarios = registry.scenarios()
    total = sum(len(s.variants) * len(s.cases) for s in scenarios)
    print(
        st.bold("stackfs demo") + ": classic stacked-filesystem bugs on real FUSE mounts, "
        "their fixes, detected and recovered by the watchdog"
    )
    print(
        wrap(
            "Each run mounts its own stack (every layer a FUSE daemon), runs real processes, "
            "and lets the watchdog decide what happened: hung tasks and the wait-for cycle, "
            "or an oops recorded by a layer's kernel model. Forced mode: each run replays "
            "the schedule stored for it (the order of the injection points stackfs explore "
            "found; a fix meets the order that breaks the buggy variant), or the scenario's "
            "barriers where none is stored, so a buggy variant reproduces on the first "
            f"try. {total} runs; reports in {root}/",
            indent="",
        )
    )
    results: list[RunResult] = []
    t0 = time.monotonic()
    done = 0
    bar = ProgressBar(total)
    skipped: list = []
    tests: list[ktap.Test] = []  # --ktap: every run in order, skipped ones included
    for s in scenarios:
        print()
        print(st.bold(f"seed {s.seed}  {s.name}") + f": {s.summary}")
        print(wrap(s.description, indent="  "))
        p = plan(s)
        why = s.unsupported()
        if why is not None:
            print(f"  SKIP: cannot run here: {why}")
            skipped += harness.skipped_cases(p, why)
            tests += ktap.skipped(p, why)
            done += p.total
            continue

        def progress(n: int, _total: int, r: RunResult) -> None:
            bar.clear()
            mark = st.green("✓") if r.matched else st.red("✗ MISMATCH")
            when = f" after {seconds(r.time_to_verdict)}" if r.reproduced else ""
            again = (
                st.dim(f"  (repeated: {len(r.disturbed)} attempt(s) disturbed from outside)")
                if r.disturbed
                else ""
            )
            print(
                f"  {r.row:<30} {r.variant:<16} expected {r.expected:<9} "
                f"-> {r.observed}{when} {mark}{again}",
                flush=True,
            )
            if not r.matched:
                for prob in r.problems or [r.error or r.summary]:
                    print(st.red(f"      {prob}"))
            bar.show(n, "")

        bar.show(done, "")
        rs = run_plan(p, root, progress, threshold=args.threshold, done_before=done, total=total)
        bar.clear()
        done += len(rs)
        results.extend(rs)
        tests += [ktap.run_test(r) for r in rs]
    elapsed = time.monotonic() - t0
    print()
    print(st.bold("Results"))
    print(
        table(
            [
                "scenario",
                "variant",
                "expected",
                "observed",
                "time to reproduce",
                "detection latency",
                "recovered",
            ],
            _demo_rows(results, st),
        )
    )
    print(
        st.dim(
            "  time to reproduce: workload start to the watchdog's verdict; detection "
            "latency: from the last edge of the cycle (or the modelled event) to the "
            "report, including the hung-task threshold"
        )
    )
    repro = [r for r in results if r.reproduced]
    if repro:
        print()
        print(
            st.bold("What the watchdog reported") + " (key lines; the full text, JSON and "
            "wait-for graph are in each run's directory)"
        )
        for r in repro:
            print(f"  {st.bold(r.row)} / {r.variant}: {r.observed}")
            text = Path(r.files.get("text", "")) if r.files.get("text") else None
            if text is not None and text.exists():
                for ln in excerpt(text.read_text()):
                    print(f"      {ln}")
            print(st.dim(f"      -> {r.report_dir}/"))
    status = _status(results)
    left = _leftover_mounts()
    print()
    n_ok = sum(r.matched for r in results)
    if status == 0:
        print(
            st.green(f"All {len(results)} runs matched their expectation")
            + f" in {elapsed:.0f} s: the buggy variants reproduce, the fixed ones complete "
            "with the right data."
        )
    else:
        print(
            st.red(f"{len(results) - n_ok} of {len(results)} runs did NOT match their expectation")
            + f" ({elapsed:.0f} s)."
        )
    if left:
        print(st.red("Still mounted: " + ", ".join(left)))
        status = status or 1
    else:
        print("Nothing is left mounted; every daemon and workload process is gone.")
    print(f"Reports: {root}/")
    summaries = summarize(results)
    payload = {
        "command": "demo",
        "report_dir": str(root),
        "status": status,
        "seconds": elapsed,
        "summary": [s.to_json() for s in summaries],
        "runs": [r.to_json() for r in results],
        "leftover_mounts": left,
        # every run of this demo has a run id that starts so (what it owns, for whoever checks)
        "run_id_prefix": f"repro-{os.getpid()}-",
    }
    _write_json(root / "demo.json", payload)
    if args.json:
        _write_json(Path(args.json), payload)
    if args.junit:
        harness.write_junit(args.junit, "stackfs demo", results, skipped, elapsed)
    if results:  # the demo's own check: nothing of its runs is left mounted
        leftovers = ["still mounted: " + ", ".join(left)] if left else []
        tests.append(
            ktap.Test("nothing left mounted", outcome.FAIL if left else outcome.PASS, "", leftovers)
        )
    ktap.write(args, tests)
    if skipped and not results:
        return harness.EXIT_SKIP
    return status


# -- parser ---------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "repro",
        help="list and run the reproducers (scenarios of the seed bugs)",
        description="Reproducers: each scenario mounts a stack, runs a workload of real "
        "processes, lets the watchdog detect what happens, recovers every mount, and compares "
        "the observed outcome with the variant's expectation.",
    )
    rsub = p.add_subparsers(dest="repro_command", metavar="SUBCOMMAND")
    ls = rsub.add_parser("list", help="list scenarios: name, seed, summary, variants")
    ls.add_argument("-v", "--verbose", action="store_true", help="also the descriptions")
    ls.set_defaults(func=cmd_list)

    sh = rsub.add_parser(
        "show",
        help="what each variant of a scenario stands for: kernels, commit, functions mirrored",
        description="Print, for each variant of scenario NAME, the kernel (or filesystem) "
        "versions and the commit it stands for and the functions its model mirrors, from the "
        "scenario's history table, and the variants' old names.",
    )
    sh.add_argument("name", metavar="NAME")
    sh.set_defaults(func=cmd_show)

    r = rsub.add_parser(
        "run",
        help="run a scenario",
        description="Run scenario NAME (every variant and case unless narrowed). Forced mode "
        "(the default) replays the row's stored schedule (stackfs/repro/schedules/), or sets "
        "the scenario's barriers where none is stored, so that the race happens on the first "
        "try (the run's notes say which; --schedule FILE replays another); "
        "--natural forces nothing and measures how often it happens: each variant and case "
        "reports N runs = R that reproduced the bug + C that completed correctly + O other "
        "(each other outcome named and counted); a buggy variant's batch matches when R >= 1 "
        "and O = 0, a fixed variant's when every run completed correctly. Exit "
        "status: 0 when every run (natural: every batch) matched its variant's expectation, "
        "1 when not, 2 on a "
        "set-up error, 4 when the scenario cannot run here (a kernel feature or tool is "
        "missing: kselftest's skip; the reason is printed).",
    )
    r.add_argument("name", metavar="NAME")
    r.add_argument("--variant", metavar="V", help="one variant (default: all)")
    r.add_argument("--case", metavar="C", help="one case of the scenario (default: all)")
    r.add_argument(
        "--natural", action="store_true", help="nothing forced: measure the reproduction rate"
    )
    r.add_argument(
        "--iterations",
        type=int,
        default=1,
        metavar="N",
        help="runs per variant and case (default 1)",
    )
    r.add_argument(
        "--report-dir",
        metavar="DIR",
        help=f"where the reports go (default {DEFAULT_REPORTS}/NAME-TIMESTAMP)",
    )
    r.add_argument("--json", metavar="FILE", help="also write every run's result as JSON")
    r.add_argument(
        "--threshold",
        type=float,
        metavar="S",
        help="seconds before a blocked task counts as hung (default: the scenario's, "
        "times $STACKFS_TIMEOUT_FACTOR)",
    )
    r.add_argument("--seed", type=int, help="random seed of natural mode's timing")
    r.add_argument(
        "--schedule",
        metavar="FILE",
        help="replay a schedule (schedule.json of a scheduled run, from stackfs explore, or "
        "written by hand): no forcing, every injection point under the scheduler, which "
        "releases the held tasks in the file's order (one --variant and --case)",
    )
    r.add_argument(
        "--junit",
        metavar="FILE",
        help="also write JUnit XML: one test case per case x variant x iteration",
    )
    ktap.add_option(r, "one result per run (natural mode: per batch, its runs nested)")
    r.add_argument(
        "--kmsg",
        action="store_true",
        help="also write each run's findings to /dev/kmsg (dmesg) in the kernel's "
        "own formats, tagged stackfs[PID] / stackfs-model[PID]",
    )
    r.epilog = harness.KSELFTEST_HELP
    r.set_defaults(func=ktap.command(cmd_run))
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])

    d = sub.add_parser(
        "demo",
        help="run every scenario in every variant and show what happened",
        description="Run every reproducer in every variant (forced mode, one run each): the "
        "buggy variants deadlock or oops, the fixed ones complete with the right data. Prints "
        "a table and the watchdog's key lines; leaves nothing mounted.",
    )
    d.add_argument(
        "--report-dir",
        metavar="DIR",
        help=f"where the reports go (default {DEFAULT_REPORTS}/demo-TIMESTAMP)",
    )
    d.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    d.add_argument(
        "--junit",
        metavar="FILE",
        help="also write JUnit XML: one test case per scenario x case x variant",
    )
    ktap.add_option(d, "one result per run, then whether anything was left mounted")
    d.add_argument(
        "--threshold",
        type=float,
        metavar="S",
        help="seconds before a blocked task counts as hung (default: each scenario's, "
        "times $STACKFS_TIMEOUT_FACTOR)",
    )
    d.epilog = harness.KSELFTEST_HELP
    d.set_defaults(func=ktap.command(cmd_demo))
