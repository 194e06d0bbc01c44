"""Every registered scenario, in every variant and case, in forced mode: the buggy variants
reproduce (with the seed's evidence), the fixed ones complete with the right data, and every
run recovers all its mounts. Uses the plugin's ``stackfs_repro`` fixture."""

from __future__ import annotations

import pytest

from stackfs.repro import registry


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
    detail = (f"observed {r.observed} ({r.summary}); problems: {r.problems}; "
              f"error: {r.error}; report: {r.report_dir}")
    assert r.observed == r.expected, detail
    assert r.matched, detail
    assert r.recovered, detail
    if r.expected != "completes":
        assert r.reproduced
        # the watchdog's report and JSON are in the run's directory, with the picture of the
        # wait-for graph when something waits (an oops leaves nothing waiting)
        assert {"text", "json"} <= set(r.files), r.files
        if r.observed == "deadlock":
            assert {"svg", "png"} <= set(r.files), r.files
        assert r.detection_latency is not None
    else:
        assert all(p.exited for p in r.processes), r.processes
