"""Issue 24 item 2: the watchdog of a run sees only its run. A report of an ``aufs-afs-copyup``
run made while another run's GFS2 cluster (two nodes and its lock manager, deadlocked: glocks
granted and queued) is up names none of that run's processes or locks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from stackfs.repro import registry
from stackfs.repro.context import Run
from stackfs.repro.runner import run_once
from stackfs.repro.scenario import NATURAL
from stackfs.repro.workload import Workload
from stackfs.runtime import control, lifecycle

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


def _contended(svc) -> list[dict]:
    """The lock manager's resources with a queued request (what a report's notes would name)."""
    try:
        res = svc.control({"op": "state"}, timeout=2.0)["dlm"]["resources"]
    except (control.ControlError, OSError, KeyError):
        return []
    return [r for r in res if r.get("queue")]


def test_a_runs_report_names_no_process_or_lock_of_another_run(tmp_path: Path):
    registry.load()
    gfs = registry.get("gfs-mmap-abba")
    scen = gfs()
    scratch = tmp_path / "foreign"
    scratch.mkdir()
    with lifecycle.Stack(run_id=f"foreign-gfs2-{os.getpid()}", log_dir=tmp_path / "logs") as st:
        run = Run(scen, gfs.variant("buggy"), gfs.cases[0], NATURAL, 1, scratch, tmp_path, st)
        scen.mount(run)
        scen.prepare(run)
        dlm = run.services["dlm"]
        for attempt in range(5):  # natural mode: the writers' ABBA is likely, not certain
            work = Workload(tmp_path / f"foreign-work-{attempt}")
            work.start(scen.workload(run), cgroup=st.cgroup)
            deadline = time.monotonic() + 20
            # both glocks queued behind each other: the ABBA, which stays
            while len(_contended(dlm)) < 2 and not work.poll() and time.monotonic() < deadline:
                time.sleep(0.1)
            if len(_contended(dlm)) == 2:
                break
            work.reap(grace=5.0)
        held = _contended(dlm)
        assert len(held) == 2, f"the foreign GFS2 run did not deadlock: {work.results}"
        foreign_pids = {dlm.pid, *(la.mount.pid for la in run.layers.values())}
        foreign_pids |= {r.pid for r in work.results}
        resources = {f"{r['lockspace']}:{r['name']}" for r in held}

        r = run_once(
            registry.get("aufs-afs-copyup"), "buggy", "mv", report_root=tmp_path / "reports"
        )
        assert r.observed == "deadlock" and r.matched, r.summary
        text = (Path(r.report_dir or "") / "report.txt").read_text()
        report = json.loads((Path(r.report_dir or "") / "report.json").read_text())
        assert "lock manager" not in text, text
        for res in resources:
            assert res not in text, f"{res} in the report"
        named = _pids_in(report)
        assert not named & foreign_pids, f"the report names {named & foreign_pids}"
        for pid in foreign_pids:
            assert f"/{pid}" not in text and f"pid {pid}" not in text, pid
        assert len(_contended(dlm)) == 2, "the foreign run was disturbed"
    work.reap(grace=0.5)


def _pids_in(obj: object) -> set[int]:
    """Every value under a ``pid``/``tid`` key of the report's JSON."""
    out: set[int] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("pid", "tid") and isinstance(v, int):
                out.add(v)
            out |= _pids_in(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _pids_in(v)
    return out
