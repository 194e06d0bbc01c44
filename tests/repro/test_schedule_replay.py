"""Replaying schedules on real mounts (``stackfs repro run --schedule``): every schedule stored
with the scenarios gives its variant's outcome, without the scenario's forcing; a schedule whose
decision cannot be taken ends the run with a one-line error within the bound, never a hang."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from stackfs.kernel.sched import Decision, Replay, Schedule
from stackfs.repro import registry, runner
from stackfs.repro.scenario import FORCED, SCHEDULED
from stackfs.repro.schedules import all_stored, expected, forced, stored


@pytest.mark.mount
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("name", "variant", "case", "path"),
    [pytest.param(*s, id=f"{s[0]}-{s[2]}-{s[1]}") for s in all_stored()],
)
def test_stored_schedule_replays(tmp_path, name, variant, case, path):
    scenario = registry.get(name)
    stored = Schedule.read(path)
    r = runner.run_once(scenario, variant, case, report_root=tmp_path, strategy=Replay(stored))
    detail = f"observed {r.observed} ({r.summary}); problems: {r.problems}; report: {r.report_dir}"
    assert r.mode == SCHEDULED
    assert r.schedule_error is None, detail
    # a schedule stored for a fix that narrows the window shows that window ("expect": its
    # outcome), and the variant allows it
    want = expected(stored, r.expected)
    assert r.observed == want, detail
    if want != r.expected:
        assert r.window == want and r.in_window, detail
    assert r.matched and r.recovered, detail
    # the run followed every forced decision of the file, and wrote its own schedule
    ran = Schedule.from_json(r.schedule)
    taken = {d.step: d.go for d in ran.decisions}
    for d in stored.forced():
        assert taken.get(d.step) == d.go, (d, ran.render())
    assert (tmp_path / r.report_dir / "schedule.json").is_file()
    assert "schedule (" in (tmp_path / r.report_dir / "summary.txt").read_text()


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_a_schedule_that_cannot_be_taken_is_a_clear_error(tmp_path):
    bad = Schedule([Decision(1, "w7.ls@start#1", ("w7.ls@start#1",))])
    t0 = time.monotonic()
    r = runner.run_once(
        registry.get("nfs-atomic-open"),
        "parallel-lookup",
        "nfs",
        report_root=tmp_path,
        strategy=Replay(bad),
    )
    assert time.monotonic() - t0 < 30
    assert r.schedule_error is not None
    assert r.schedule_error.startswith("decision 1 of the schedule cannot be taken: w7.ls@start#1")
    assert "\n" not in r.schedule_error
    assert not r.matched and r.recovered
    assert any(p.startswith("schedule: decision 1") for p in r.problems)


@pytest.mark.mount
@pytest.mark.timeout(120)
def test_explore_command(tmp_path):
    """``stackfs explore`` end to end on a small space: a line per run, the summary,
    ``explore.json``, exit 0 when the fixed variant completed in every schedule."""
    out = tmp_path / "ex"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackfs",
            "explore",
            "lustre-open-rename",
            "--variant",
            "lu-14949",
            "--case",
            "cat",
            "--budget",
            "3",
            "--report-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert sum(1 for line in lines if "lu-14949 (cat): completes [completes]" in line) == 3
    assert "verdict: completed in all 3 schedules -> matches" in res.stdout
    [ex] = json.loads((out / "explore.json").read_text())["explorations"]
    assert (ex["runs"], ex["outcomes"], ex["matched"]) == (3, {"completes": 3}, True)
    assert 1 <= ex["distinct_schedules"] <= 3 and ex["strategy"] == "dfs"


@pytest.mark.mount
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "variant", "case"),
    [
        ("aufs-afs-copyup", "buggy", "mv"),
        ("nfs-atomic-open", "buggy", "nfs"),
        ("gfs-mmap-abba", "buggy", "write"),
        ("lustre-open-rename", "buggy", "cat"),
        ("lustre-open-rename", "estale-by-fid", "contended"),
    ],
)
def test_forced_mode_replays_the_stored_schedule(tmp_path, name, variant, case):
    """Forced mode (the default) of a row with a stored schedule is its replay: the run's own
    schedule.json took every forced decision of the stored file, at the same step, without the
    scenario's barriers; the run says so in its notes."""
    path = stored(name, variant, case)
    assert path is not None
    want = [(d.step, d.go) for d in Schedule.read(path).forced()]
    r = runner.run_once(registry.get(name), variant, case, report_root=tmp_path)
    detail = f"observed {r.observed} ({r.summary}); problems: {r.problems}; {r.report_dir}"
    assert r.mode == FORCED and r.matched and r.recovered, detail
    assert f"forced by the stored schedule {path.name}" in r.notes, r.notes
    ran = json.loads((tmp_path / r.report_dir / "schedule.json").read_text())
    assert ran["decisions"] == r.schedule["decisions"]
    taken = {d["step"]: d["go"] for d in ran["decisions"]}
    assert want and all(taken.get(step) == go for step, go in want), (want, ran["decisions"])


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_forced_mode_of_a_fix_replays_the_buggy_order_as_far_as_it_goes(tmp_path):
    """A fixed variant without a schedule of its own is forced by another variant's, whose
    ``forced_for`` names it (``free-run``): as far as the fix reaches the same points."""
    r = runner.run_once(registry.get("aufs-afs-copyup"), "fixed-aufs", "mv", report_root=tmp_path)
    assert r.mode == FORCED and r.matched and r.observed == "completes", r.summary
    assert (
        "forced by the stored schedule aufs-afs-copyup.buggy.mv.json, unreached: free-run"
        in r.notes
    ), r.notes
    [first] = Schedule.read(stored("aufs-afs-copyup", "buggy", "mv")).forced()
    assert (first.step, first.go) in {
        (d.step, d.go) for d in Schedule.from_json(r.schedule).decisions
    }
    # a fix that takes another path: lu-8371 retries by name, so the estale-by-fid order's
    # retry by FID (decision 6) never comes; the renames and the first open by FID go as stored
    lu = runner.run_once(
        registry.get("lustre-open-rename"), "lu-8371", "contended", report_root=tmp_path
    )
    assert lu.mode == FORCED and lu.matched and lu.observed == "completes", lu.summary
    assert (
        "forced by the stored schedule lustre-open-rename.estale-by-fid.contended.json, "
        "unreached: free-run" in lu.notes
    ), lu.notes
    borrowed = Schedule.read(stored("lustre-open-rename", "estale-by-fid", "contended"))
    ran = {(d.step, d.go) for d in Schedule.from_json(lu.schedule).decisions}
    assert {(d.step, d.go) for d in borrowed.decisions if d.step <= 5} <= ran, ran


#: rows the scenario's barriers still force, and why (docs/explore.md, "Forced mode")
BARRIER_ROWS = {
    # buggy's read order, then a free run under the scheduler: without GFS2's minimum glock hold
    # time (gl_hold_time, not modelled) the glocks ping-pong past the scenario's timeout
    ("gfs-mmap-abba", "fixed-nofault", "read"),
}


def test_every_row_is_forced_by_a_stored_schedule():
    """No row of any scenario (every variant in every case: the demo's rows) is left to the
    scenario's barriers, but the ones named in ``BARRIER_ROWS`` with their reason: each is
    forced by its own stored schedule or by one whose ``forced_for`` names its variant."""
    unforced = {
        (scen.name, v.name, c.name)
        for scen in registry.scenarios()
        for v in scen.variants
        for c in scen.cases
        if forced(scen.name, v.name, c.name) is None
    }
    assert unforced == BARRIER_ROWS
