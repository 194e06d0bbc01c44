"""Scheduled injection points across processes: a daemon's point under ``sched:SOCKET`` holds
the arriving task until the run's scheduler (:class:`RunScheduler`, a unix socket in the
runner) releases it, the task named by its role; a point whose scheduler is gone lets it pass.
In-process (trio plays the daemon, this process the workload); no mount."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import trio

from stackfs.kernel.inject import Action, InjectionPoints, parse_action
from stackfs.kernel.sched import SETTLE, Decision, FreeRun, Replay, Schedule
from stackfs.kernel.task import Task, running_as
from stackfs.linux.proc import thread_states
from stackfs.repro.schedserver import QUIET_SAMPLES, RunScheduler


def test_parse_sched():
    assert parse_action("sched:/run/x/sched.sock") == Action("sched", path="/run/x/sched.sock")
    assert str(parse_action("sched:/run/x/sched.sock")) == "sched:/run/x/sched.sock"
    with pytest.raises(ValueError, match="absolute socket path"):
        parse_action("sched:relative.sock")


def test_a_scheduled_point_holds_the_task_until_the_scheduler_says_go():
    comm = Task.from_pid(threading.get_native_id()).comm
    with RunScheduler(FreeRun(), {os.getpid(): "test"}, settle=0.3) as rs:
        rs.set_workload([(os.getpid(), "pytest")])
        pts = InjectionPoints()
        pts.declare("p", "a point")
        pts.set("p", rs.action)
        seen: dict[str, object] = {}

        async def main() -> None:
            async def arrive() -> None:
                with running_as(Task.from_pid(threading.get_native_id())):
                    t0 = time.monotonic()
                    await pts.hit("p")
                    seen["held"] = time.monotonic() - t0

            async with trio.open_nursery() as n:
                n.start_soon(arrive)
                with trio.fail_after(5):
                    while not rs.sched.waiting():
                        await trio.sleep(0.01)
                seen["waiting"] = pts.snapshot()[0]["waiting"]
                seen["labels"] = rs.sched.waiting()

        trio.run(main)
        schedule = rs.close()
    # this process runs (the test's own threads), so the settle bound decided, and said so
    assert seen["labels"] == ["w0.pytest@test:p#1"]
    assert seen["waiting"] == [{"pid": os.getpid(), "comm": comm}]
    assert 0.25 <= float(seen["held"]) < 3.0  # type: ignore[arg-type]
    [d] = schedule.decisions
    assert (d.go, d.by, d.forced) == ("w0.pytest@test:p#1", SETTLE, False)
    assert not os.path.exists(rs.path)


def test_a_point_whose_scheduler_is_gone_lets_the_task_pass(tmp_path):
    pts = InjectionPoints()
    pts.declare("p", "a point")
    pts.set("p", f"sched:{tmp_path}/gone.sock")

    async def main() -> None:
        with trio.fail_after(2):
            await pts.hit("p")

    trio.run(main)
    assert pts.snapshot()[0]["waiting"] == [] and pts.snapshot()[0]["hits"] == 1


def test_a_cancelled_wait_is_withdrawn_from_the_choices():
    """A FUSE request interrupted while held (its task cancelled) is no longer a choice."""
    never = Schedule([Decision(1, "nobody@x#1", ("nobody@x#1",))])
    with RunScheduler(Replay(never), {os.getpid(): "test"}, settle=0.05, replay_wait=30) as rs:
        rs.set_workload([(os.getpid(), "pytest")])
        pts = InjectionPoints()
        pts.declare("p", "a point")
        pts.set("p", rs.action)

        async def main() -> None:
            with trio.move_on_after(5) as scope:
                async with trio.open_nursery() as n:
                    n.start_soon(pts.hit, "p")
                    while not rs.sched.waiting():
                        await trio.sleep(0.01)
                    n.cancel_scope.cancel()
            assert not scope.cancelled_caught

        trio.run(main)
        deadline = time.monotonic() + 2
        while rs.sched.waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rs.sched.waiting() == []
        assert rs.sched.decisions == [] and rs.sched.error is None


def test_quiescence_is_sampled_afresh_after_every_move():
    """Three quiet samples in a row, all taken after the last arrival or release: a count
    carried over from before a release would let the next decision follow it after one sample,
    before the released task has had a chance to run."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        rs = RunScheduler(FreeRun(), {})  # not entered: no driver, quiescent() asked by hand
        rs.set_workload([(sleeper.pid, "sleep")])
        deadline = time.monotonic() + 5
        while thread_states(sleeper.pid) != {sleeper.pid: "S"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [rs.quiescent(["a@p#1"]) for _ in range(QUIET_SAMPLES)][-1] is True
        rs.sched.arrive("b", "p")  # something moved
        assert [rs.quiescent(["a@p#1", "b@p#1"]) for _ in range(QUIET_SAMPLES)] == [False] * (
            QUIET_SAMPLES - 1
        ) + [True]
        rs.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_slower_machine_waits_longer_for_a_recorded_label(monkeypatch):
    """$STACKFS_TIMEOUT_FACTOR (a VM under software emulation) scales the replay bound and the
    settle bound, as it scales the daemons' start-ups: a replay in a guest gave up at 2 s."""
    monkeypatch.setenv("STACKFS_TIMEOUT_FACTOR", "5")
    rs = RunScheduler(FreeRun(), {}, settle=0.25, replay_wait=2.0)  # not entered: no driver
    try:
        assert rs.sched.replay_wait == pytest.approx(10.0)
        assert rs.sched.settle == pytest.approx(1.25)
    finally:
        rs.close()
