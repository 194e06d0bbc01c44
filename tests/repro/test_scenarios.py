"""Every registered scenario, in every variant and case, in forced mode: the buggy variants
reproduce (with the seed's evidence), the fixed ones complete with the right data, and every
run recovers all its mounts, on the first attempt. Uses the plugin's ``stackfs_repro`` fixture.
A daemon that crashes makes its run fail: it is never retried to green."""

from __future__ import annotations

import errno

import pytest

from stackfs import testfs
from stackfs.repro import registry, runner
from stackfs.repro.context import Layer, Run
from stackfs.repro.scenario import COMPLETES, Proc, Scenario, Variant
from stackfs.runtime import lifecycle


def _runs():
    for s in registry.scenarios():
        for v in s.variants:
            for c in s.cases:
                yield pytest.param(s.name, v.name, c.name, id=f"{s.name}-{c.name}-{v.name}")


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "variant", "case"), list(_runs()))
def test_scenario_forced(stackfs_repro, name, variant, case):
    r = stackfs_repro(name, variant, case)
    detail = (
        f"observed {r.observed} ({r.summary}); problems: {r.problems}; "
        f"error: {r.error}; report: {r.report_dir}; retried after: {r.disturbed}"
    )
    assert not r.disturbed, detail  # a verdict on the first attempt, or none
    # a fix that narrows the window may show it: forced mode replays the order that breaks
    # the buggy variant (or the window's own stored schedule)
    assert r.observed == r.expected or (r.in_window and r.observed == r.window), detail
    assert r.matched, detail
    assert r.recovered, detail
    if r.observed != "completes":
        assert r.reproduced or r.in_window
        # the watchdog's report and JSON are in the run's directory, with the picture of the
        # wait-for graph when something waits, of the racing tasks and their object for an oops
        assert {"text", "json"} <= set(r.files), r.files
        if r.observed in ("deadlock", "oops"):
            assert {"svg", "png"} <= set(r.files), r.files
            assert r.detection_latency is not None
        else:  # error:ENAME: a real process saw it, and every process exited
            assert r.errors and all(p.exited for p in r.processes), r.processes
    else:
        assert all(p.exited for p in r.processes), r.processes


class CrashingDaemon(Scenario):
    """Not a seed: a one-layer stack whose daemon dies in a handler (``stackfs testfs crash``,
    flaky: only the first time), under a ``mkdir`` that must succeed."""

    name = "test-crashing-daemon"
    seed = "000"
    summary = "a daemon that crashes in LOOKUP"
    description = "the testfs crash daemon exits in the LOOKUP handler of crash*"
    variants = (Variant("fixed", COMPLETES, "the daemon must not crash"),)
    timeout = 10.0

    def mount(self, run: Run) -> None:
        mp = run.dir("crash")
        m = run.stack.mount(lifecycle.stackfs_argv("testfs", "crash", str(mp)), mp)
        run.layers["crash"] = Layer("crash", "testfs-crash", m)

    def workload(self, run: Run) -> list[Proc]:
        return [Proc(["mkdir", run.layer("crash").mnt / "crash-dir"])]


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_a_crashing_daemon_fails_the_run_instead_of_retrying(tmp_path, monkeypatch):
    # the daemon crashes on the first attempt only: a retry would go green
    monkeypatch.setenv("STACKFS_TESTFS_CRASH_MARKER", str(tmp_path / "crashed-once"))
    r = runner.run_with_retries(CrashingDaemon, "fixed", report_root=tmp_path / "reports")
    assert (tmp_path / "crashed-once").exists()
    assert r.disturbed == [], r.disturbed  # not retried
    assert not r.matched and r.observed != COMPLETES, (r.observed, r.summary)
    # mkdir saw its connection go: the run's own daemon died under it
    assert [p.errno for p in r.processes] in ([errno.ECONNABORTED], [errno.ENOTCONN]), r.summary
    [u] = [u for u in r.unmounts if u["mountpoint"].endswith("/crash")]
    assert u["exit_status"] == testfs.EXIT_CRASH and u["exit_signal"] is None, u
    assert u["gone_before"], u
