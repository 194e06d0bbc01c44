"""``stackfs repro list|run`` and ``stackfs demo``: output, exit statuses, JSON, reports."""

from __future__ import annotations

import json
import subprocess

import pytest
from junitparser import JUnitXml

from stackfs.cli import main
from stackfs.repro import registry
from stackfs.repro.scenario import DEADLOCK, Variant
from stackfs.repro.scenarios.aufs_afs_copyup import AufsAfsCopyup
from stackfs.runtime import lifecycle, rundir
from stackfs.runtime.service import timeout_factor


def stackfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lifecycle.stackfs_argv(*args), capture_output=True, text=True,
                          timeout=timeout)


def test_list_names_scenarios_seeds_and_variants():
    res = stackfs("repro", "list")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for s in registry.scenarios():
        assert s.name in out and f"seed {s.seed}" in out and s.summary in out
        for v in s.variants:
            assert f"variant {v.name}" in out
    assert "-> deadlock" in out and "-> oops" in out and "-> completes" in out


@pytest.mark.parametrize("args", [["no-such-scenario"],
                                  ["aufs-afs-copyup", "--variant", "no-such-variant"],
                                  ["aufs-afs-copyup", "--case", "no-such-case"]])
def test_run_bad_names_are_one_line_errors_with_status_2(args):
    res = stackfs("repro", "run", *args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("stackfs: "), res.stderr


@pytest.mark.mount
@pytest.mark.timeout(120)
def test_run_buggy_twice_writes_json_and_reports(tmp_path):
    out = tmp_path / "run.json"
    res = stackfs("repro", "run", "aufs-afs-copyup", "--variant", "buggy", "--case", "mv",
                  "--iterations", "2", "--report-dir", str(tmp_path / "r"), "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["status"] == 0 and len(data["runs"]) == 2
    assert all(r["observed"] == "deadlock" and r["matched"] for r in data["runs"])
    [summary] = data["summary"]
    assert summary["reproduced"] == 2 and summary["rate_per_100"] == 100.0
    run_dir = tmp_path / "r" / "aufs-afs-copyup" / "buggy" / "mv" / "001"
    for name in ("report.txt", "report.json", "waitgraph.svg", "waitgraph.png",
                 "summary.txt", "result.json"):
        assert (run_dir / name).exists(), name
    # mv sleeps in request_wait_answer's interruptible wait (state S): the testbed's block
    assert "task mv:" in (run_dir / "report.txt").read_text()
    assert " blocked in an interruptible FUSE wait for " in (run_dir / "report.txt").read_text()
    assert "deadlock" in res.stdout and "every run matched" in res.stdout


class WrongExpectation(AufsAfsCopyup):
    """fixed-afs, wrongly expected to deadlock: the run must say it did not match."""

    name = "test-wrong-expectation"
    variants = (Variant("fixed-afs", DEADLOCK, "expects what cannot happen",
                        {"copyup": "aufs", "afs": "fixed"}),)
    cases = AufsAfsCopyup.cases[:1]


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_run_exits_1_when_the_observation_differs(tmp_path, capsys):
    registry.register(WrongExpectation)
    try:
        status = main(["repro", "run", WrongExpectation.name, "--report-dir", str(tmp_path)])
    finally:
        registry._REGISTRY.pop(WrongExpectation.name, None)
    out = capsys.readouterr().out
    assert status == 1, out
    assert "expected deadlock, observed completes" in out and "MISMATCH" in out


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.xdist_group("demo")  # one demo at a time under xdist (tests/test_readme.py runs one)
def test_demo_shows_every_scenario_and_variant_and_leaves_nothing_mounted(tmp_path):
    res = stackfs("demo", "--report-dir", str(tmp_path / "demo"), "--junit",
                  str(tmp_path / "demo.xml"), timeout=230 * timeout_factor())
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    total = sum(len(s.variants) * len(s.cases) for s in registry.scenarios())
    [suite] = list(JUnitXml.fromfile(str(tmp_path / "demo.xml")))  # a valid JUnit file
    assert (suite.tests, suite.failures, suite.errors) == (total, 0, 0)
    assert f"All {total} runs matched their expectation" in out
    assert "Nothing is left mounted" in out
    for s in registry.scenarios():
        assert f"seed {s.seed}  {s.name}" in out
    # the key lines of the watchdog's reports: the recursive lock, the oops of seed 003
    assert "WARNING: possible recursive locking detected" in out
    assert "osi_VM_FlushPages" in out
    assert "RIP: 0010:d_splice_alias" in out
    data = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert data["status"] == 0 and not data["leftover_mounts"]
    # checked again from outside, on what the demo's own runs made (the machine is shared:
    # other runs' mounts come and go meanwhile): no run directory of its daemons is left (a
    # daemon removes its own on a clean exit; a killed one's stays, with its mount's fsname)
    prefix = data["run_id_prefix"]
    assert not [(pid, info) for pid, info in rundir.all_infos().items()
                if str(info.get("run_id", "")).startswith(prefix)]


class BrokenPrepare(AufsAfsCopyup):
    """A prepare step that fails: a set-up error, not an outcome."""

    name = "test-broken-prepare"
    variants = AufsAfsCopyup.variants[:1]
    cases = AufsAfsCopyup.cases[:1]

    def prepare(self, run):
        run.sh(["cat", run.layer("union").mnt / "no-such-file"])


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_run_exits_2_on_a_setup_error_and_leaves_nothing(tmp_path, capsys):
    registry.register(BrokenPrepare)
    try:
        status = main(["repro", "run", BrokenPrepare.name, "--report-dir", str(tmp_path),
                       "--json", str(tmp_path / "r.json")])
    finally:
        registry._REGISTRY.pop(BrokenPrepare.name, None)
    assert status == 2, capsys.readouterr().out
    [run] = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert run["observed"] == "setup-error" and "no-such-file" in run["error"]
    assert run["recovered"], run["recovery_notes"]
