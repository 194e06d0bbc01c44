"""The real kernel deadlock of shared/NOTES.md, detected, explained and recovered.

``stackfs testfs lookup-mkdir``: the LOOKUP handler of ``trigger`` waits for a helper thread
that mkdirs in the same directory through the mount. ``stat MNT/trigger`` holds the directory's
i_rwsem shared in ``__lookup_slow`` while it waits for the reply; the helper waits for it
exclusive in ``filename_create``.
"""

from __future__ import annotations

import json
import os

import pytest

from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import Watchdog

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]


def test_lookup_mkdir_deadlock_detected_explained_recovered(
    testfs, workload, tmp_path, nothing_left, picture_ok
):
    m = testfs("lookup-mkdir")
    wd = Watchdog([m.mountpoint], threshold=1.0, abort=True, report_dir=tmp_path / "report")
    stat = workload(["stat", str(m.mountpoint / "trigger")])
    report = wd.run(timeout=15 * timeout_factor())

    # detected: a deadlock, with a cycle through the FUSE request and the directory's i_rwsem
    assert report.verdict == "deadlock", report.text()
    cycle = report.cycle
    assert cycle is not None and cycle.kind == "fuse_reentry"
    g = report.graph
    caller = g.tasks[stat.pid]
    assert "request_wait_answer" in caller.frames and "fuse_lookup" in caller.frames
    assert "__lookup_slow" in caller.frames
    assert caller.conn == m.conn
    helpers = [g.tasks[t] for t in cycle.tasks if t != stat.pid]
    assert len(helpers) == 1
    helper = helpers[0]
    assert helper.pid == m.pid  # a thread of the daemon
    assert helper.state == "D" and helper.frames[0] == "filename_create"
    assert helper.syscall is not None and helper.syscall.name == "mkdir"
    assert set(cycle.tasks) == {stat.pid, helper.tid}
    kinds = [g.nodes[n].kind for n in cycle.nodes]
    assert kinds.count("request") == 1 and kinds.count("klock") == 1
    klock = next(g.nodes[n] for n in cycle.nodes if g.nodes[n].kind == "klock")
    assert klock.attrs.path == str(m.mountpoint)
    req = next(g.nodes[n] for n in cycle.nodes if g.nodes[n].kind == "request")
    assert req.attrs.request.op == "lookup" and req.attrs.request.name == "trigger"
    # whichever of the two went to sleep last may still be just under the threshold
    assert report.hangs and all(h.blocked_for >= 1.0 for h in report.hangs)
    assert {h.task.tid for h in report.hangs + report.also_blocked} == {stat.pid, helper.tid}

    # explained, in the kernel's words
    text = report.text()
    assert f"task stat:{stat.pid} blocked " in text
    # the helper sleeps in filename_create's down_write (state D): the kernel's hung-task
    # block; stat in request_wait_answer's interruptible wait (state S): the testbed's own
    for h in report.hangs:
        if h.task.state == "D":
            assert f"INFO: task {h.task.comm}:{h.task.tid} blocked for more than " in text
        else:
            assert h.task.state == "S" and h.task.tid == stat.pid
            assert f"task stat:{stat.pid} blocked in an interruptible FUSE wait for " in text
    assert "Call Trace:" in text and "request_wait_answer" in text
    assert "filename_create" in text and "__lookup_slow" in text
    assert "Showing all locks held in the system:" in text
    assert f"held by stat/{stat.pid}" in text
    assert "Possible unsafe locking scenario" in text and "*** DEADLOCK ***" in text
    assert 'fuse_request(lookup "trigger")' in text

    # latency: from the moment the helper blocked (the last edge) to the report
    assert report.timing["latency"] < 1.0 + 1.0

    # recovered: nothing mounted, the daemon gone, nobody blocked
    rec = report.recovery
    assert rec is not None and rec.ok, rec.render()
    assert rec.aborted == [m.conn] and rec.detached == [str(m.mountpoint)]
    assert stat.wait(timeout=5) != 0
    assert b"connection abort" in stat.stdout.read()
    nothing_left(m, [stat.pid, helper.tid])

    # the same content as JSON, and a picture
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["verdict"] == "deadlock" and data["cycle"]["kind"] == "fuse_reentry"
    assert data["recovery"]["ok"] is True
    assert (tmp_path / "report" / "report.txt").read_text().startswith("stackfs watchdog:")
    picture_ok(report.files)
    assert os.path.getsize(report.files["svg"]) > 0


def test_recover_later_through_the_api(testfs, workload, nothing_left):
    """Without abort=True the report comes first; recover() then does the same."""
    m = testfs("lookup-mkdir")
    wd = Watchdog([m.mountpoint], threshold=0.5)
    stat = workload(["stat", str(m.mountpoint / "trigger")])
    report = wd.run(timeout=15 * timeout_factor())
    assert report.verdict == "deadlock" and report.recovery is None
    assert m.is_mounted() and m.daemon_alive()  # nothing was touched
    rec = wd.recover(report)
    assert rec.ok, rec.render()
    assert stat.wait(timeout=5) != 0
    nothing_left(m, report.involved_tids())
