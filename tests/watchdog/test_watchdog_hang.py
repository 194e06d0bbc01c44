"""A daemon that is alive but never answers: a hang with no cycle."""

from __future__ import annotations

import pytest

from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import Watchdog

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]


def test_unanswered_lookup_is_a_hang_without_cycle(testfs, workload, tmp_path, nothing_left,
                                                     picture_ok):
    m = testfs("hang")
    wd = Watchdog([m.mountpoint], threshold=1.0, report_dir=tmp_path / "r")
    stat = workload(["stat", str(m.mountpoint / "hang1")])
    report = wd.run(timeout=15 * timeout_factor())

    assert report.verdict == "hang", report.text()
    assert report.cycle is None and report.cycles == []
    [hang] = [h for h in report.hangs if h.task.tid == stat.pid]
    assert hang.blocked_for >= 1.0
    assert hang.task.fuse_wait and hang.task.conn == m.conn
    assert hang.request is not None and hang.request.op == "lookup"
    assert hang.request.name == "hang1" and hang.request.pid == stat.pid
    assert hang.daemon is not None and hang.daemon.pid == m.pid and hang.daemon.alive
    assert hang.waiting == 1
    g = report.graph
    handler = [e for e in g.edges if e.kind == "handler"]
    assert len(handler) == 1 and handler[0].dst == f"daemon:{m.pid}"
    assert "not answered by daemon" in report.summary
    text = report.text()
    # the real kernel keeps stat in request_wait_answer's interruptible wait (state S), which
    # its hung-task detector never reports: the testbed's own block, not "INFO: task"
    assert hang.task.state == "S"
    assert f"task stat:{stat.pid} blocked in an interruptible FUSE wait for " in text
    assert "INFO: task" not in text and "hung_task_timeout_secs" not in text
    assert f"FUSE connection {m.conn}" in text
    picture_ok(report.files)

    # the daemon is alive but not answering: recovery has to kill it
    assert m.daemon_alive()
    rec = wd.recover(report)
    assert rec.ok, rec.render()
    assert rec.aborted == [m.conn]
    assert stat.wait(timeout=5) != 0
    nothing_left(m, [stat.pid])


def test_no_hang_no_report(testfs, workload):
    """A lookup that is answered is progress: nothing is reported, the mount is untouched."""
    m = testfs("hang")
    wd = Watchdog([m.mountpoint], threshold=0.3)
    stat = workload(["stat", str(m.mountpoint / "other")])
    report = wd.run(timeout=1.0)
    assert report.verdict == "ok", report.text()
    assert stat.wait(timeout=5) != 0  # ENOENT, answered
    assert m.is_mounted()


async def test_run_async_from_trio(testfs, workload, nothing_left):
    """The same from trio code: the loop does not block the event loop."""
    import trio

    m = testfs("hang")
    wd = Watchdog([m.mountpoint], threshold=0.5, abort=True)
    stat = workload(["stat", str(m.mountpoint / "hang-async")])
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await trio.sleep(0.05)
            ticks += 1

    async with trio.open_nursery() as n:
        n.start_soon(tick)
        report = await wd.run_async(timeout=10 * timeout_factor())
        n.cancel_scope.cancel()
    assert report.verdict == "hang" and report.recovery.ok
    assert ticks >= 5  # the event loop kept running while the watchdog watched
    assert stat.wait(timeout=5) != 0
    nothing_left(m, [stat.pid])
