"""Natural mode is honest (issue 22, item 6): a natural batch says, per variant and case, how
many runs reproduced the bug, how many completed and what the others did, and its verdict
follows from those counts. Run results are built by hand, as the runner fills them in
(``problems``, ``matched``); no mounts, except the one short real batch at the end."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from junitparser import Failure, JUnitXml

from stackfs.cli import main
from stackfs.repro import explore, harness
from stackfs.repro.cli import _status
from stackfs.repro.outcome import SETUP_ERROR, STILL_RUNNING, WRONG_RESULT
from stackfs.repro.runner import RunResult
from stackfs.repro.stats import BUG, OK, OTHER, classify, summarize


def run(
    observed: str,
    expected: str = "deadlock",
    variant: str = "buggy",
    problems: list[str] | None = None,
    mode: str = "natural",
    it: int = 1,
) -> RunResult:
    """A run as :func:`stackfs.repro.runner._judge` leaves it (natural mode's rule for
    ``matched``: the expected outcome, or for a buggy variant a correct completion)."""
    problems = list(problems or [])
    exact = observed == expected and not problems
    completed = observed == "completes" and not problems
    r = RunResult(
        "s",
        "000",
        "default",
        variant,
        mode,
        it,
        expected,
        observed=observed,
        matched=exact or (mode == "natural" and expected != "completes" and completed),
        reproduced=expected != "completes" and observed == expected,
        problems=problems,
        recovered=True,
        total_seconds=1.0,
    )
    return r


def test_a_batch_counts_reproduced_completed_and_each_other_outcome() -> None:
    runs = [
        run("deadlock"),
        run("completes"),
        run("deadlock"),
        run("completes"),
        run("completes"),
        run(WRONG_RESULT, problems=["union: /f has 35 bytes, expected 62"]),
        run(STILL_RUNNING),
    ]
    [s] = summarize(runs)
    assert (s.runs, s.reproduced, s.completed, s.other) == (7, 2, 3, 2)
    assert dict(s.others) == {WRONG_RESULT: 1, STILL_RUNNING: 1}
    assert s.counts_text() == (
        "7 runs: 2 reproduced the bug (deadlock), 3 completed, 2 other "
        "(still-running ×1, wrong-result ×1)"
    )
    j = s.to_json()
    assert (j["reproduced"], j["completed"], j["other"]) == (2, 3, 2)
    assert j["others"] == {WRONG_RESULT: 1, STILL_RUNNING: 1}
    assert j["verdict"] == s.verdict()


def test_a_buggy_batch_with_a_wrong_result_fails_although_the_bug_reproduced() -> None:
    runs = [
        run("deadlock"),
        run("completes"),
        run(WRONG_RESULT, problems=["union: /f has 35 bytes, expected 62"]),
    ]
    [s] = summarize(runs)
    assert s.reproduced == 1
    assert s.failure == (
        "1 of 3 runs neither reproduced the bug nor completed correctly: wrong-result ×1"
    )
    assert "DOES NOT MATCH" in s.verdict()
    assert _status(runs, [s]) == 1


def test_a_buggy_batch_with_another_hang_or_an_oops_fails() -> None:
    for observed in ("oops", STILL_RUNNING, "error:ENOTCONN"):
        runs = [run("error:ENOENT", expected="error:ENOENT"), run(observed, "error:ENOENT")]
        [s] = summarize(runs)
        assert s.failure is not None and f"{observed} ×1" in s.failure, observed
        assert _status(runs, [s]) == 1


def test_a_buggy_batch_matches_with_its_rate() -> None:
    runs = [run("completes", it=i) for i in range(4)] + [run("deadlock")]
    [s] = summarize(runs)
    assert s.failure is None
    assert s.verdict() == (
        "5 runs: 1 reproduced the bug (deadlock), 4 completed, 0 other "
        "-> matches, rate 1/5 (20/100)"
    )
    assert _status(runs, [s]) == 0


def test_a_buggy_batch_that_never_reproduced_fails_with_its_counts() -> None:
    runs = [run("completes") for _ in range(3)]
    [s] = summarize(runs)
    assert s.verdict().startswith("3 runs: 0 reproduced the bug (deadlock), 3 completed, 0 other")
    assert "never reproduced in 3 natural runs" in (s.failure or "")
    assert _status(runs, [s]) == 1


def test_a_fixed_variants_hang_fails_the_batch() -> None:
    runs = [run("completes", "completes", "fixed") for _ in range(4)]
    runs.append(run("deadlock", "completes", "fixed"))
    [s] = summarize(runs)
    assert (s.reproduced, s.completed, s.other) == (0, 4, 1)
    assert s.counts_text() == "5 runs: 4 completed, 1 other (deadlock ×1)"
    assert s.failure == "1 of 5 runs did not complete correctly: deadlock ×1"
    assert _status(runs, [s]) == 1


def test_a_fixed_variants_error_oops_or_wrong_result_fails_the_batch() -> None:
    for observed in ("oops", "error:EIO", WRONG_RESULT, STILL_RUNNING):
        runs = [run("completes", "completes", "fixed"), run(observed, "completes", "fixed")]
        [s] = summarize(runs)
        assert s.failure == f"1 of 2 runs did not complete correctly: {observed} ×1"
        assert _status(runs, [s]) == 1


def test_the_bug_without_its_evidence_or_recovery_is_other_not_reproduced() -> None:
    runs = [
        run("deadlock", problems=["no recursive lock on the AFS inode"]),
        run("completes", problems=["recovery incomplete: still mounted: /m"]),
    ]
    assert [classify(r) for r in runs] == [OTHER, OTHER]
    [s] = summarize(runs)
    assert s.reproduced == 0 and s.rate == 0.0
    assert dict(s.others) == {"deadlock with problems": 1, "completes, recovery incomplete": 1}
    assert s.failure is not None and s.failure.startswith("2 of 2 runs neither")


def test_a_set_up_error_is_other_and_exits_2() -> None:
    runs = [run("deadlock"), run(SETUP_ERROR, problems=[])]
    [s] = summarize(runs)
    assert dict(s.others) == {SETUP_ERROR: 1}
    assert _status(runs, [s]) == 2


def test_forced_batches_keep_their_per_run_verdict() -> None:
    runs = [run("deadlock", mode="forced"), run("completes", mode="forced")]
    [s] = summarize(runs)
    assert s.failure == "1 of 2 runs did not match"
    assert (s.reproduced, s.completed, s.other) == (1, 1, 0)


def test_explore_judges_runs_by_the_same_kinds() -> None:
    assert explore.classify is classify
    assert [classify(run(o)) for o in ("deadlock", "completes", "oops")] == [BUG, OK, OTHER]


def test_junit_carries_each_batchs_counts_and_verdict(tmp_path: Path) -> None:
    buggy = [run("completes", it=1), run("completes", it=2)]
    fixed = [
        run("completes", "completes", "fixed", it=1),
        run("completes", "completes", "fixed", it=2),
    ]
    summaries = summarize(buggy + fixed)
    out = tmp_path / "j.xml"
    harness.write_junit(out, "natural", buggy + fixed, batches=summaries)
    [suite] = list(JUnitXml.fromfile(str(out)))
    assert (suite.tests, suite.failures) == (6, 1)
    cases = {c.name: c for c in suite}
    batch = cases["buggy natural batch"]
    [fail] = batch.result
    assert isinstance(fail, Failure) and "never reproduced in 2 natural runs" in fail.message
    # <properties> in a <testcase>, as pytest's record_property writes them
    [el] = [tc for tc in ET.parse(out).iter("testcase") if tc.get("name") == "buggy natural batch"]
    props = {p.get("name"): p.get("value") for p in el.iter("property")}
    assert props == {"runs": "2", "reproduced": "0", "completed": "2", "other": "0"}
    assert "2 runs: 0 reproduced the bug (deadlock), 2 completed" in batch.system_out
    assert cases["fixed natural batch"].is_passed
    assert cases["buggy #1"].is_passed  # a run in which the bug did not happen is no failure


def test_a_real_natural_batch_reports_its_counts(tmp_path: Path, capsys) -> None:
    """Two natural runs of a fixed Lustre client (sanityn 31r's cat, which LU-14949 makes
    succeed): the summary and the JSON say 2 runs, every one of them counted."""
    js = tmp_path / "r.json"
    status = main(
        [
            "repro",
            "run",
            "lustre-open-rename",
            "--variant",
            "lu-14949",
            "--case",
            "cat",
            "--natural",
            "--iterations",
            "2",
            "--seed",
            "3",
            "--report-dir",
            str(tmp_path / "reports"),
            "--json",
            str(js),
        ]
    )
    out = capsys.readouterr().out
    [s] = json.loads(js.read_text())["summary"]
    assert s["runs"] == 2 and s["completed"] + s["other"] == 2 and s["reproduced"] == 0
    assert f"lustre-open-rename (cat) / lu-14949: 2 runs: {s['completed']} completed" in out
    assert status == (0 if s["other"] == 0 else 1)


def test_a_fix_that_narrows_the_window_reports_its_window_rate_and_passes() -> None:
    """A fixed variant whose expectation says it narrows the window (``Variant.window``): its
    runs in the window are counted apart with their rate and do not fail the batch; any other
    outcome still does."""
    runs = [run("completes", "completes", "fixed", it=i) for i in range(3)]
    oops = run("oops", "completes", "fixed")
    oops.window, oops.in_window, oops.matched = "oops", True, True
    runs.append(oops)
    for r in runs:
        r.window = "oops"
    [s] = summarize(runs)
    assert (s.completed, s.in_window, s.other, s.window) == (3, 1, 0, "oops")
    assert s.failure is None
    assert s.verdict() == (
        "4 runs: 3 completed, 1 in the window the fix leaves (oops), 0 other "
        "-> matches, in the window 1/4 (25/100)"
    )
    hang = run("deadlock", "completes", "fixed")
    hang.window = "oops"
    [s] = summarize([*runs, hang])
    assert s.failure == "1 of 5 runs did not complete correctly: deadlock ×1"
