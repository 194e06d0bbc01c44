"""KTAP for ``--ktap FILE`` (or ``-``) of ``stackfs repro run``, ``stackfs explore`` and
``stackfs demo``: the kernel's Documentation/dev-tools/ktap.rst, version 1.

What is written, rule by rule of that document:

* a version line ``KTAP version 1``, then a plan ``1..N`` (N tests at that level);
* one result line per test, ``ok N DESCRIPTION`` or ``not ok N DESCRIPTION``, N counting from 1
  at each level; the description is a run's name (``SCENARIO/CASE/VARIANT/ITERATION``) and
  never holds a ``#``;
* directives after ``# ``: ``SKIP REASON`` (result ``ok``: the scenario cannot run on this
  machine), ``ERROR MESSAGE`` (result ``not ok``: a set-up error, nothing was observed);
* diagnostic lines ``# TEXT`` directly before the result they are about (expected and
  observed outcome, the report directory, what did not match);
* nested tests (a natural batch's runs, an exploration's schedules): the subtests' own version
  line, plan and results, indented by two spaces per level, before the parent's result; the
  parent fails when a subtest fails (and may fail on its own: a batch in which the bug never
  reproduced);
* at the end, kselftest's ``# Totals: pass:P fail:F xfail:0 xpass:0 skip:S error:E`` line
  (``ksft_print_cnts()`` in tools/testing/selftests/kselftest.h) over the top-level tests.

The exit statuses are kselftest's (0 pass, 1 fail, 4 skip: ``KSFT_PASS``, ``KSFT_FAIL``,
``KSFT_SKIP``); a set-up error exits 2, which kselftest's runner.sh reports as ``not ok ...
# exit=2`` (see docs/kselftest.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from stackfs.repro import outcome
from stackfs.repro.runner import Plan, RunResult
from stackfs.repro.stats import Summary

VERSION = "KTAP version 1"
#: one level of nesting (ktap.rst: "One level of indentation is two spaces")
INDENT = "  "


@dataclass
class Test:
    """One KTAP test: its result, the diagnostics before it, its subtests."""

    name: str
    #: :data:`outcome.PASS`, :data:`outcome.FAIL`, :data:`outcome.ERROR` or :data:`outcome.SKIP`
    status: str
    #: a skip's reason or an error's message (after the directive)
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[Test] = field(default_factory=list)


def one_line(text: str) -> str:
    """``text`` on one line (KTAP's lines end at a newline)."""
    return " ".join(text.split())


def description(name: str) -> str:
    """A test's description: one line, no ``#`` (ktap.rst: "can't include #")."""
    return one_line(name.replace("#", " "))


def result_line(n: int, t: Test) -> str:
    ok = t.status in (outcome.PASS, outcome.SKIP)
    line = f"{'ok' if ok else 'not ok'} {n} {description(t.name)}"
    if t.status == outcome.SKIP:
        line += " # SKIP" + (f" {one_line(t.reason)}" if t.reason else "")
    elif t.status == outcome.ERROR:
        line += " # ERROR" + (f" {one_line(t.reason)}" if t.reason else "")
    return line


def lines(tests: Sequence[Test], level: int = 0) -> list[str]:
    """The KTAP lines of ``tests`` at nesting ``level``: version, plan, each test's subtests,
    diagnostics and result."""
    pad = INDENT * level
    out = [pad + VERSION, f"{pad}1..{len(tests)}"]
    for n, t in enumerate(tests, 1):
        if t.subtests:
            out += lines(t.subtests, level + 1)
        out += [f"{pad}# {one_line(d)}" for d in t.diagnostics if d.strip()]
        out.append(pad + result_line(n, t))
    return out


def totals(tests: Iterable[Test]) -> str:
    """kselftest's totals line (``ksft_print_cnts()``) over ``tests``."""
    statuses = [t.status for t in tests]
    return (
        f"# Totals: pass:{statuses.count(outcome.PASS)} fail:{statuses.count(outcome.FAIL)} "
        f"xfail:0 xpass:0 skip:{statuses.count(outcome.SKIP)} "
        f"error:{statuses.count(outcome.ERROR)}"
    )


def document(tests: Sequence[Test]) -> str:
    """The whole KTAP output of ``tests`` (top level), ending in the totals line."""
    return "\n".join([*lines(tests), totals(tests)]) + "\n"


# -- tests of runs, batches, skips ---------------------------------------------------------------


def run_name(r: RunResult) -> str:
    return f"{r.scenario}/{r.case}/{r.variant}/{r.iteration}"


def run_test(r: RunResult, name: str | None = None) -> Test:
    """A run's test: passes when it matched its variant's expectation (:func:`outcome.status`),
    with what it expected and observed as diagnostics."""
    status = outcome.status(r.observed, r.matched)
    expected = r.expected + (f" (narrows the window: {r.window})" if r.window else "")
    diags = [
        f"{run_name(r)}: {r.mode} mode, expected {expected}, observed {r.observed}"
        + (" (in the window the fix leaves)" if r.in_window else ""),
    ]
    if status != outcome.PASS:
        diags += [f"problem: {p}" for p in r.problems]
        diags.append(f"summary: {r.summary}" if r.summary else "")
    if r.report_dir:
        diags.append(f"report: {r.report_dir}")
    reason = (r.error or r.summary or "set-up error") if status == outcome.ERROR else ""
    return Test(name or run_name(r), status, reason, diags)


def batch_test(s: Summary, runs: Sequence[RunResult]) -> Test:
    """A natural batch (one variant in one case): its runs as subtests; it fails when the batch
    fails its variant (:attr:`Summary.failure`: a run that neither reproduced the bug nor
    completed correctly, or a buggy variant that never reproduced)."""
    subtests = [run_test(r, f"run {r.iteration}") for r in runs]
    if any(t.status == outcome.ERROR for t in subtests):
        status = outcome.ERROR
    else:
        status = outcome.PASS if s.failure is None else outcome.FAIL
    name = f"{s.scenario}/{s.case}/{s.variant}/{s.mode}"
    reason = "set-up error" if status == outcome.ERROR else ""
    return Test(name, status, reason, [f"{name}: {s.verdict()}"], subtests)


def batches(results: Sequence[RunResult], summaries: Sequence[Summary]) -> list[Test]:
    """One :func:`batch_test` per summary, with the runs it summarises."""
    return [
        batch_test(s, [r for r in results if (r.scenario, r.case, r.variant, r.mode) == _key(s)])
        for s in summaries
    ]


def _key(s: Summary) -> tuple[str, str, str, str]:
    return (s.scenario, s.case, s.variant, s.mode)


def skipped(p: Plan, reason: str) -> list[Test]:
    """A skipped test for every run of plan ``p`` (the scenario cannot run here)."""
    return [
        Test(f"{p.scenario.name}/{c}/{v}/{i}", outcome.SKIP, reason)
        for v in p.variants
        for c in p.cases
        for i in range(1, p.iterations + 1)
    ]


# -- the option -----------------------------------------------------------------------------------


def add_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--ktap",
        metavar="FILE",
        help=f"also write KTAP (the kernel's test protocol, version 1): {what}; '-' writes it "
        "to stdout, and the command's own output goes to stderr",
    )


def command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A verb with ``--ktap``: with ``--ktap -`` stdout carries the KTAP alone, the verb's
    own output goes to stderr (kselftest's runner.sh merges and prefixes both)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        args.ktap_stream = sys.stdout
        target = getattr(args, "ktap", None)
        if target and target != "-":
            _writable(Path(target))
        if target != "-":
            return func(args)
        with contextlib.redirect_stdout(sys.stderr):
            return func(args)

    return run


def _writable(path: Path) -> None:
    """``--ktap FILE`` can be written (checked before the runs: a one-line error, status 2)."""
    from stackfs.cli import CLIError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("w").close()
    except OSError as exc:
        raise CLIError(f"--ktap {path}: {exc.strerror}", status=2) from None


def write(args: argparse.Namespace, tests: Sequence[Test]) -> None:
    """Write ``tests`` where ``--ktap`` says (nothing without it)."""
    target = getattr(args, "ktap", None)
    if not target:
        return
    text = document(tests)
    if target == "-":
        stream: TextIO = getattr(args, "ktap_stream", None) or sys.stdout
        stream.write(text)
        stream.flush()
        return
    Path(target).write_text(text)
