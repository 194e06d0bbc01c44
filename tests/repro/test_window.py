"""A fix that narrows the window without closing it (issue 22, item 4; ``Variant.window``).

nfs-atomic-open's ``fixed`` variant is 4.7-rc3's ``d_drop`` on every open_context error, which
seed 003 shows still oopses when two openers both d_drop before either splices. Its
expectation is ``completes`` with the window ``oops`` allowed: forced runs, natural batches and
``stackfs explore`` must all judge such a run the same way (it matches, counted apart). Results
are built by hand as the runner fills them in; no mounts (the stored schedule of that window is
replayed on a mount by tests/repro/test_schedule_replay.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stackfs.repro import registry, runner
from stackfs.repro.explore import Exploration
from stackfs.repro.outcome import Observed
from stackfs.repro.runner import RunResult
from stackfs.repro.scenario import (
    COMPLETES,
    DEADLOCK,
    FORCED,
    NATURAL,
    OOPS,
    SCHEDULED,
    Variant,
    error,
)
from stackfs.repro.stats import OK, OTHER, WINDOW, classify, summarize


def test_the_nfs_fixed_variant_narrows_the_window() -> None:
    s = registry.get("nfs-atomic-open")
    fixed = s.variant("fixed")
    for case in ("nfs", "union"):
        assert fixed.expect_for(case) == COMPLETES
        assert fixed.window_for(case) == OOPS
        assert fixed.expect_text(case) == "completes (narrows the window: oops)"
    # parallel-lookup (c94c0953) closes it; the buggy variant has no window to narrow
    assert s.variant("parallel-lookup").window_for("nfs") is None
    assert s.variant("buggy").window_for("nfs") is None
    assert not fixed.is_bug


def test_a_window_must_be_a_buggy_outcome() -> None:
    with pytest.raises(ValueError, match="window must be a buggy outcome"):
        Variant("f", COMPLETES, "x", window=COMPLETES)
    with pytest.raises(ValueError, match="window must be a buggy outcome"):
        Variant("f", COMPLETES, "x", window="hang")
    v = Variant("f", COMPLETES, "x", per_case={"c": DEADLOCK}, window=error("ESTALE"))
    # only where the variant is expected to complete: a buggy case keeps its own expectation
    assert v.window_for("c") is None and v.window_for("d") == "error:ESTALE"


def judged(observed: str, mode: str, problems: list[str] | None = None) -> RunResult:
    """A run of nfs-atomic-open's fixed variant judged by :func:`runner._judge`."""
    v = registry.get("nfs-atomic-open").variant("fixed")
    r = RunResult(
        "nfs-atomic-open",
        "003",
        "nfs",
        "fixed",
        mode,
        1,
        v.expect_for("nfs"),
        window=v.window_for("nfs"),
        recovered=True,
    )
    finding = observed != COMPLETES
    obs = SimpleNamespace(
        finding=finding,
        verdict=observed if finding else None,
        report=SimpleNamespace(summary="kernel BUG at fs/dcache.c!"),
        workload=SimpleNamespace(results=[]),
    )
    seen = Observed(observed if finding else None, problems=tuple(problems or ()))
    runner._judge(r, seen, mode, obs)  # type: ignore[arg-type]
    return r


@pytest.mark.parametrize("mode", [FORCED, NATURAL, SCHEDULED])
def test_forced_natural_and_scheduled_runs_judge_the_window_alike(mode: str) -> None:
    r = judged(OOPS, mode)
    assert r.observed == OOPS and r.expected == COMPLETES
    assert r.matched and r.in_window and not r.reproduced
    assert classify(r) == WINDOW
    # the same oops without its evidence (another bug) is not the window: it does not match
    bad = judged(OOPS, mode, problems=["the oops names no nfs_lookup <- nfs_atomic_open chain"])
    assert not bad.matched and not bad.in_window and classify(bad) == OTHER
    # a hang is no part of what the fix leaves
    hang = judged(DEADLOCK, mode)
    assert not hang.matched and not hang.in_window and classify(hang) == OTHER
    ok = judged(COMPLETES, mode)
    assert ok.matched and not ok.in_window and classify(ok) == OK


def test_a_natural_batch_counts_the_window_apart_and_matches() -> None:
    runs = [judged(OOPS, NATURAL), judged(COMPLETES, NATURAL), judged(COMPLETES, NATURAL)]
    [s] = summarize(runs)
    assert (s.runs, s.completed, s.in_window, s.other) == (3, 2, 1, 0)
    assert s.failure is None
    assert "1 in the window the fix leaves (oops)" in s.counts_text()
    assert s.to_json()["in_window"] == 1 and s.to_json()["window"] == OOPS
    [bad] = summarize([judged(DEADLOCK, NATURAL)])
    assert bad.failure is not None


def test_an_exploration_with_window_runs_matches_and_says_so() -> None:
    ex = Exploration("nfs-atomic-open", "fixed", "nfs", COMPLETES, "dfs", 0, window=OOPS)
    ex.runs = [judged(COMPLETES, SCHEDULED), judged(OOPS, SCHEDULED), judged(COMPLETES, SCHEDULED)]
    ex.first_failure = 2
    assert ex.matched
    assert ex.verdict() == (
        "completed in 2 of 3 schedules, oops in 1: the window the fix leaves (first: run 2)"
    )
    assert ex.to_json()["in_window"] == 1
    ex.runs.append(judged(DEADLOCK, SCHEDULED))
    assert not ex.matched and ex.verdict().startswith("FAILED in 2 of 4")
