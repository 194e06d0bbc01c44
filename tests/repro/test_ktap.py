"""``--ktap`` of ``stackfs repro run``, ``stackfs explore`` and ``stackfs demo`` (issue 26, item 4):
the output parses under the rules of the kernel's Documentation/dev-tools/ktap.rst (a strict
parser below, written from that document), and the exit statuses are kselftest's."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stackfs.cli import main
from stackfs.repro import harness, ktap, registry
from stackfs.repro.explore import Exploration, ktap_test
from stackfs.repro.runner import RunResult, plan
from stackfs.repro.scenario import COMPLETES, DEADLOCK, NATURAL, OOPS, SCHEDULED, Variant
from stackfs.repro.scenarios.aufs_afs_copyup import AufsAfsCopyup
from stackfs.repro.stats import summarize
from stackfs.runtime import lifecycle

# -- a KTAP parser, from ktap.rst's rules ---------------------------------------------------------

VERSION = re.compile(r"^KTAP version 1$")
PLAN = re.compile(r"^1\.\.(\d+)$")
#: <result> <number> [<description>][ # [<directive>] [<diagnostic data>]]; no # in the
#: description
RESULT = re.compile(r"^(ok|not ok) ([1-9]\d*)(?: ([^#]*?))?(?: # ?(.*))?$")
DIAGNOSTIC = re.compile(r"^# ")
DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")


class KTAPError(AssertionError):
    pass


@dataclass
class Result:
    ok: bool
    number: int
    name: str
    directive: str | None
    reason: str
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[Result] = field(default_factory=list)


def parse(text: str, strict: bool = True) -> list[Result]:
    """The top-level tests of a KTAP document (with their subtests). ``strict``: no unknown
    lines (what stackfs writes has none), and ktap.rst's "should"s are checked too: a
    parent with a failing subtest fails, TIMEOUT and ERROR results are ``not ok``."""
    lines = text.splitlines()
    tests, i = _level(lines, 0, 0, strict)
    if i != len(lines):
        raise KTAPError(f"line {i + 1}: {lines[i]!r} after the last result")
    return tests


def _level(lines: list[str], i: int, depth: int, strict: bool) -> tuple[list[Result], int]:
    pad = "  " * depth
    if (
        i >= len(lines)
        or not VERSION.match(lines[i].removeprefix(pad))
        or (lines[i][: len(pad)] != pad)
    ):
        raise KTAPError(f"line {i + 1}: expected {pad!r}'KTAP version 1'")
    i += 1
    m = PLAN.match(lines[i].removeprefix(pad)) if i < len(lines) else None
    if m is None or not lines[i].startswith(pad):
        raise KTAPError(f"line {i + 1}: expected the plan after the version line")
    planned, i = int(m.group(1)), i + 1
    out: list[Result] = []
    diags: list[str] = []
    subtests: list[Result] = []
    while len(out) < planned:
        if i >= len(lines):
            raise KTAPError(f"{len(out)} of {planned} planned tests at depth {depth}")
        line = lines[i]
        if line.startswith(pad + "  KTAP version"):
            if subtests:
                raise KTAPError(f"line {i + 1}: a second set of subtests for one test")
            subtests, i = _level(lines, i, depth + 1, strict)
            continue
        if not line.startswith(pad) or line[len(pad) : len(pad) + 1] == " ":
            raise KTAPError(f"line {i + 1}: {line!r}: wrong indentation at depth {depth}")
        body = line[len(pad) :]
        if DIAGNOSTIC.match(body):
            diags.append(body[2:])
        elif m := RESULT.match(body):
            ok, number = m.group(1) == "ok", int(m.group(2))
            if number != len(out) + 1:
                raise KTAPError(f"line {i + 1}: test number {number}, expected {len(out) + 1}")
            rest = m.group(4) or ""
            word = rest.split(" ", 1)[0] if rest else ""
            directive = word if word in DIRECTIVES else None
            reason = rest[len(word) :].strip() if directive else rest
            r = Result(ok, number, m.group(3) or "", directive, reason, diags, subtests)
            if strict:
                if directive in ("TIMEOUT", "ERROR") and ok:
                    raise KTAPError(f"line {i + 1}: {directive} must be 'not ok'")
                if ok and any(not s.ok for s in subtests):
                    raise KTAPError(f"line {i + 1}: a parent passes with a failing subtest")
            out.append(r)
            diags, subtests = [], []
        elif strict:
            raise KTAPError(f"line {i + 1}: unknown line {line!r}")
        i += 1
    if subtests:
        raise KTAPError(f"line {i}: subtests without their parent's result")
    return out, i


def test_the_parser_accepts_the_documents_example_and_refuses_broken_ones() -> None:
    """The parser against ktap.rst's own example (and what breaks its rules)."""
    example = "\n".join(
        [
            "KTAP version 1",
            "1..1",
            "  KTAP version 1",
            "  1..3",
            "    KTAP version 1",
            "    1..1",
            "    # test_1: initializing test_1",
            "    ok 1 test_1",
            "  ok 1 example_test_1",
            "    KTAP version 1",
            "    1..2",
            "    ok 1 test_1 # SKIP test_1 skipped",
            "    ok 2 test_2",
            "  ok 2 example_test_2",
            "    KTAP version 1",
            "    1..3",
            "    ok 1 test_1",
            "    # test_2: FAIL",
            "    not ok 2 test_2",
            "    ok 3 test_3 # SKIP test_3 skipped",
            "  not ok 3 example_test_3",
            "not ok 1 main_test",
        ]
    )
    [main_test] = parse(example)
    assert not main_test.ok and [t.name for t in main_test.subtests] == [
        "example_test_1",
        "example_test_2",
        "example_test_3",
    ]
    skipped = main_test.subtests[1].subtests[0]
    assert (skipped.directive, skipped.reason) == ("SKIP", "test_1 skipped")
    assert main_test.subtests[2].subtests[1].diagnostics == ["test_2: FAIL"]
    for broken in [
        "1..1\nok 1 a",  # no version line
        "KTAP version 1\n1..2\nok 1 a",  # fewer results than planned
        "KTAP version 1\n1..1\nok 2 a",  # numbering starts at 1
        "KTAP version 1\n1..1\nrandom\nok 1 a",  # an unknown line (strict)
        "KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  not ok 1 a\nok 1 b",  # parent ok
        "KTAP version 1\n1..1\nok 1 a # ERROR no",  # ERROR must be not ok
    ]:
        with pytest.raises(KTAPError):
            parse(broken)


# -- what stackfs writes --------------------------------------------------------------------------


def _run(variant: str, expected: str, observed: str, matched: bool, **kw) -> RunResult:
    r = RunResult(
        "aufs-afs-copyup",
        "000",
        "mv",
        variant,
        kw.pop("mode", "forced"),
        kw.pop("iteration", 1),
        expected,
        observed=observed,
        matched=matched,
        reproduced=expected != COMPLETES and observed == expected,
        recovered=True,
        report_dir="/tmp/r #1",
        **kw,
    )
    r.total_seconds = 1.0
    return r


def test_forced_runs_one_result_each_with_diagnostics() -> None:
    runs = [
        _run("buggy", DEADLOCK, DEADLOCK, True),
        _run("fixed-afs", COMPLETES, DEADLOCK, False, problems=["a hang\nover two lines"]),
        _run("buggy", DEADLOCK, "setup-error", False, iteration=2, error="mount # failed"),
    ]
    text = ktap.document([ktap.run_test(r) for r in runs])
    assert text.startswith("KTAP version 1\n1..3\n")
    a, b, c = parse(text.split("# Totals")[0])
    assert (a.ok, a.name, a.directive) == (True, "aufs-afs-copyup/mv/buggy/1", None)
    assert "expected deadlock, observed deadlock" in a.diagnostics[0]
    assert (b.ok, b.name) == (False, "aufs-afs-copyup/mv/fixed-afs/1")
    assert "problem: a hang over two lines" in b.diagnostics
    assert (c.ok, c.directive, c.reason) == (False, "ERROR", "mount # failed")
    assert text.endswith("# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:1\n")


def test_a_natural_batch_nests_its_runs_and_fails_when_the_bug_never_reproduced() -> None:
    runs = [_run("buggy", DEADLOCK, COMPLETES, True, mode=NATURAL, iteration=i) for i in (1, 2)]
    [batch] = parse(ktap.document(ktap.batches(runs, summarize(runs))).split("# Totals")[0])
    assert batch.name == "aufs-afs-copyup/mv/buggy/natural" and not batch.ok
    assert [(t.ok, t.name) for t in batch.subtests] == [(True, "run 1"), (True, "run 2")]
    assert "never reproduced" in batch.diagnostics[0]
    runs.append(_run("buggy", DEADLOCK, DEADLOCK, True, mode=NATURAL, iteration=3))
    [batch] = parse(ktap.document(ktap.batches(runs, summarize(runs))).split("# Totals")[0])
    assert batch.ok and len(batch.subtests) == 3


def test_an_exploration_passes_with_its_window_and_fails_without_its_bug() -> None:
    fixed = Exploration("nfs-atomic-open", "fixed", "nfs", COMPLETES, "dfs", 0, window=OOPS)
    fixed.runs = [
        _run("fixed", COMPLETES, COMPLETES, True, mode=SCHEDULED),
        _run(
            "fixed", COMPLETES, OOPS, True, mode=SCHEDULED, iteration=2, window=OOPS, in_window=True
        ),
    ]
    fixed.first_failure = 2
    buggy = Exploration("aufs-afs-copyup", "buggy", "mv", DEADLOCK, "dfs", 0)
    buggy.runs = [_run("buggy", DEADLOCK, COMPLETES, False, mode=SCHEDULED)]
    a, b = parse(ktap.document([ktap_test(fixed), ktap_test(buggy)]).split("# Totals")[0])
    assert a.ok and [t.ok for t in a.subtests] == [True, True]
    assert "[window]" in a.subtests[1].diagnostics[0]
    # the one schedule completed (no failure of its own), but the bug was not found
    assert not b.ok and b.subtests[0].ok and "bug NOT found" in b.diagnostics[0]


class NeedsMissingTool(AufsAfsCopyup):
    name = "test-ktap-missing-tool"
    requires = ("stackfs-no-such-tool",)


@pytest.fixture
def missing_tool_scenario():
    registry.register(NeedsMissingTool)
    yield NeedsMissingTool
    registry._REGISTRY.pop(NeedsMissingTool.name, None)


@pytest.mark.parametrize("verb", ["repro", "explore"])
def test_a_scenario_that_cannot_run_is_skipped_with_its_reason_and_exits_4(
    missing_tool_scenario, verb: str, tmp_path: Path, capsys
) -> None:
    argv = ["repro", "run"] if verb == "repro" else ["explore"]
    argv += [NeedsMissingTool.name, "--report-dir", str(tmp_path / "r"), "--ktap", "-"]
    assert main(argv) == harness.EXIT_SKIP == 4
    out, err = capsys.readouterr()
    tests = parse(out.split("# Totals")[0])  # stdout is the KTAP alone
    want = plan(NeedsMissingTool).total if verb == "repro" else len(NeedsMissingTool.variants)
    assert len(tests) == want * (1 if verb == "repro" else len(NeedsMissingTool.cases))
    assert all(t.ok and t.directive == "SKIP" for t in tests)
    assert tests[0].reason == "tool(s) not installed: stackfs-no-such-tool"
    assert "SKIP: cannot run here" in err  # the command's own output went to stderr
    assert f"skip:{len(tests)} error:0" in out


def test_an_unwritable_ktap_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("")
    status = main(["repro", "run", "aufs-afs-copyup", "--ktap", str(tmp_path / "f" / "x")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stackfs: --ktap ")


def stackfs(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lifecycle.stackfs_argv(*args), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.mount
@pytest.mark.timeout(180)
def test_a_real_run_writes_ktap_and_exits_as_kselftest_expects(tmp_path: Path) -> None:
    """On real FUSE mounts: the buggy variant reproduces (ok, exit 0); a run that does not match
    its expectation is ``not ok`` and exits 1 (kselftest's KSFT_FAIL)."""
    res = stackfs(
        "repro",
        "run",
        "aufs-afs-copyup",
        "--variant",
        "buggy",
        "--case",
        "mv",
        "--report-dir",
        str(tmp_path / "r"),
        "--ktap",
        "-",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    [t] = parse(res.stdout.split("# Totals")[0])
    assert (t.ok, t.name) == (True, "aufs-afs-copyup/mv/buggy/1")
    assert "observed deadlock" in t.diagnostics[0]
    assert "every run matched" in res.stderr


class WrongExpectation(AufsAfsCopyup):
    """fixed-afs, wrongly expected to deadlock: the run does not match its expectation."""

    name = "test-ktap-wrong-expectation"
    variants = (
        Variant(
            "fixed-afs", DEADLOCK, "expects what cannot happen", {"copyup": "aufs", "afs": "fixed"}
        ),
    )
    cases = AufsAfsCopyup.cases[:1]


@pytest.mark.mount
@pytest.mark.timeout(120)
def test_a_mismatch_is_not_ok_and_exits_1(tmp_path: Path) -> None:
    registry.register(WrongExpectation)
    try:
        status = main(
            [
                "repro",
                "run",
                WrongExpectation.name,
                "--report-dir",
                str(tmp_path / "r"),
                "--ktap",
                str(tmp_path / "out.ktap"),
            ]
        )
    finally:
        registry._REGISTRY.pop(WrongExpectation.name, None)
    assert status == 1
    [t] = parse((tmp_path / "out.ktap").read_text().split("# Totals")[0])
    assert not t.ok and t.directive is None and "expected deadlock" in t.diagnostics[0]


def test_the_kselftest_script_skips_without_root(tmp_path: Path) -> None:
    """contrib/kselftest/stackfs_demo.sh as an unprivileged user: kselftest's skip (4), said
    in KTAP."""
    script = Path(__file__).resolve().parents[2] / "contrib" / "kselftest" / "stackfs_demo.sh"
    assert os.access(script, os.X_OK)
    res = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert res.returncode == 4, res.stdout + res.stderr
    assert res.stdout.splitlines()[:2] == ["KTAP version 1", "1..0 # SKIP needs root (FUSE mounts)"]
