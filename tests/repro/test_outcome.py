"""One verdict (issue 25, item 4): :func:`stackfs.repro.outcome.judge` decides what a run
observed and whether it matches, for the runner, the explorer, the pytest plugin and the
JUnit/KTAP writers alike. No mounts: observations are built as the watchdog and the workload
leave them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from stackfs.repro import outcome, runner
from stackfs.repro.observe import Observation
from stackfs.repro.outcome import (
    BUG,
    COMPLETES,
    DEADLOCK,
    OK,
    OOPS,
    OTHER,
    STILL_RUNNING,
    WINDOW,
    WRONG_RESULT,
    Expected,
    Failure,
    Observed,
    Outcome,
    error,
    judge,
)
from stackfs.repro.runner import RunResult
from stackfs.repro.scenario import FORCED, Scenario
from stackfs.repro.workload import ProcResult


def test_an_outcome_is_its_name() -> None:
    assert isinstance(error("ENOENT"), Outcome) and error("ENOENT") == "error:ENOENT"
    assert error("ENOENT", "ESTALE").errnos == {"ENOENT", "ESTALE"}
    assert json.loads(json.dumps({"observed": DEADLOCK})) == {"observed": "deadlock"}
    assert DEADLOCK.is_bug and not COMPLETES.is_bug
    # the scenarios' names are the same objects (re-exported, not a second definition)
    from stackfs.repro import scenario

    assert scenario.DEADLOCK is DEADLOCK and scenario.error is error


ENOENT = Failure("ENOENT", "cat f: exit 1: No such file or directory, expected exit 0")
NO_ERRNO = Failure(None, "cat f: exit 3, expected exit 0")


@pytest.mark.parametrize(
    ("seen", "expect", "observed", "matched"),
    [
        (Observed(DEADLOCK), DEADLOCK, DEADLOCK, True),
        (Observed("hang"), DEADLOCK, "hang", False),
        (Observed(DEADLOCK, problems=("no recursive lock",)), DEADLOCK, DEADLOCK, False),
        (Observed(None), COMPLETES, COMPLETES, True),
        (Observed(None, exited=False), COMPLETES, STILL_RUNNING, False),
        (Observed(None, failed=(ENOENT,)), error("ENOENT"), error("ENOENT"), True),
        (Observed(None, failed=(ENOENT,)), COMPLETES, error("ENOENT"), False),
        (Observed(None, failed=(NO_ERRNO,)), COMPLETES, WRONG_RESULT, False),
        (Observed(None, problems=("g: wrong data",)), COMPLETES, WRONG_RESULT, False),
    ],
)
def test_judge_reads_the_outcome_off_what_was_seen(
    seen: Observed, expect: str, observed: str, matched: bool
) -> None:
    j = judge(seen, Expected(expect))
    assert (j.observed, j.matched) == (observed, matched)
    assert j.reproduced == (expect != COMPLETES and observed == expect)


def test_an_explained_errno_is_no_problem_an_unexplained_one_is() -> None:
    j = judge(Observed(None, failed=(ENOENT,)), Expected(error("ENOENT")))
    assert j.errors == ("ENOENT",) and j.problems == () and j.kind == BUG
    j = judge(Observed(None, failed=(ENOENT,)), Expected(COMPLETES))
    assert j.problems == (ENOENT.text,) and j.kind == OTHER


def test_rate_window_schedule_and_recovery() -> None:
    # natural mode measures a rate: a buggy variant's run that completed correctly matches
    j = judge(Observed(None), Expected(DEADLOCK, rate=True))
    assert j.matched and not j.reproduced and j.kind == OK
    assert not judge(Observed(None), Expected(DEADLOCK)).matched  # forced: it must reproduce
    # a fix that narrows the window: the bug's outcome, with its evidence, matches apart
    j = judge(Observed(OOPS), Expected(COMPLETES, window=OOPS))
    assert j.matched and j.in_window and j.kind == WINDOW
    j = judge(Observed(OOPS, problems=("no nfs_lookup chain",)), Expected(COMPLETES, OOPS))
    assert not j.matched and not j.in_window and j.kind == OTHER
    # a schedule that could not be followed, a recovery that left something: no match
    j = judge(Observed(DEADLOCK, schedule_error="w0.mv never waited"), Expected(DEADLOCK))
    assert not j.matched and j.problems == ("schedule: w0.mv never waited",)
    seen = Observed(
        DEADLOCK, recovered=False, recovery_notes=("unmount /m: clean", "daemon 7 still alive")
    )
    j = judge(seen, Expected(DEADLOCK))
    assert not j.matched and j.problems == ("recovery incomplete: daemon 7 still alive",)
    assert j.found == ()


def _observation(*procs: ProcResult) -> Observation:
    work = SimpleNamespace(results=list(procs), poll=lambda: True)
    report = SimpleNamespace(found=False, verdict="ok", summary="")
    return Observation(None, report, work, None)  # type: ignore[arg-type]


def test_the_runner_and_the_plugin_judge_the_same_observation_alike(tmp_path: Path) -> None:
    """The same processes, judged by the runner (a scenario's run) and by the plugin (its
    ``WatchResult`` and assertions): one outcome."""
    from stackfs.pytest_plugin import WatchResult, assert_does_not_reproduce, assert_reproduces

    for stderr, status, want in [
        ("cat: f: No such file or directory\n", 1, error("ENOENT")),
        ("", 0, COMPLETES),
        ("", 3, WRONG_RESULT),
    ]:
        proc = ProcResult("cat f", ["cat", "f"], 10, "cat", 0.0, 1.0, status, "", stderr)
        obs = _observation(proc)
        r = RunResult("s", "000", "default", "v", FORCED, 1, COMPLETES, recovered=True)
        run = SimpleNamespace(variant=None)
        runner._judge(r, runner._check(r, Scenario(), run, obs), FORCED, obs)  # type: ignore[arg-type]
        seen = obs.seen()
        plugin = WatchResult(
            observed=judge(seen, Expected(COMPLETES)).observed,
            verdict="ok",
            summary="",
            report=None,
            processes=[proc],
            time_to_verdict=None,
            detection_latency=None,
            recovered=None,
            report_dir=tmp_path,
            seen=seen,
        )
        assert r.observed == plugin.observed == want
        if want == COMPLETES:
            assert_does_not_reproduce(plugin)
        else:
            with pytest.raises(AssertionError, match=f"observed {want}"):
                assert_does_not_reproduce(plugin)
        if want.startswith("error:"):
            assert_reproduces(plugin, want)


def test_one_status_for_junit_ktap_and_the_exit_status() -> None:
    assert outcome.status(DEADLOCK, True) == outcome.PASS
    assert outcome.status(COMPLETES, False) == outcome.FAIL
    assert outcome.status(outcome.SETUP_ERROR, False) == outcome.ERROR


def test_every_stored_schedules_expect_is_an_outcome_its_variant_allows() -> None:
    """A stored schedule's ``"expect"`` (schedules/*.json) is read through the one outcome
    type: the variant's expectation in that case, or the window its fix leaves."""
    from stackfs.kernel.sched import Schedule
    from stackfs.repro import registry, schedules

    for name, variant, case, path in schedules.all_stored():
        v = registry.get(name).variant(variant)
        want = schedules.expected(Schedule.read(path), v.expect_for(case))
        assert isinstance(want, Outcome)
        assert want in (v.expect_for(case), v.window_for(case)), path.name
    with pytest.raises(ValueError, match="is no outcome"):
        schedules.expected(Schedule.from_json({"decisions": [], "expect": "sometimes"}), COMPLETES)
