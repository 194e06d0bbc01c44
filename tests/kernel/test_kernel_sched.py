"""The scheduler core (stackfs.kernel.sched): simulated tasks (threads) at scheduled points.

Two tasks each pass two points; the run is quiescent when every task waits or is done, as the
runner's /proc check says for real processes. Bounded DFS runs every order once; a schedule
written to a file replays the same order; a decision that cannot be taken is a one-line error
within the bound, and every task is released (no hang).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from stackfs.kernel.sched import (
    DFS,
    FAIR_BOUND,
    PCT,
    Decision,
    FreeRun,
    Prefix,
    Replay,
    Schedule,
    ScheduleError,
    Scheduler,
    Strategy,
    forced_subset,
)

TASKS = ("w0.cat", "w1.mv")
POINTS = ("nfs:nfs_lookup", "nfs:nfs_open_context")


def simulate(
    strategy: Strategy, *, replay_wait: float = 2.0, settle: float = 5.0
) -> tuple[Scheduler, list[str]]:
    """Run two simulated tasks through POINTS under ``strategy``; the order they passed."""
    s = Scheduler(strategy, settle=settle, replay_wait=replay_wait)
    passed: list[str] = []
    done: list[str] = []
    lock = threading.Lock()

    def task(name: str) -> None:
        for p in POINTS:
            t = s.arrive(name, p)
            assert s.wait(t, 10.0), f"{t.label} never released"
            with lock:
                passed.append(t.label)
        with lock:
            done.append(name)

    def quiescent(waiting: Sequence[str]) -> bool:
        with lock:
            return len(waiting) + len(done) == len(TASKS)

    stop = threading.Event()
    threads = [threading.Thread(target=task, args=(n,)) for n in TASKS]
    for th in threads:
        th.start()
    driver = threading.Thread(target=s.drive, args=(quiescent, stop))
    driver.start()
    for th in threads:
        th.join(15.0)
        assert not th.is_alive()
    stop.set()
    driver.join(5.0)
    s.close()
    return s, passed


def test_dfs_runs_every_order_once():
    dfs = DFS()
    orders: list[tuple[str, ...]] = []
    prefix = dfs.first()
    while prefix is not None:
        s, passed = simulate(prefix)
        assert s.error is None
        assert [d.go for d in s.decisions] == passed  # the scheduler decided every pass
        assert all(d.by == "quiescent" for d in s.decisions)
        orders.append(tuple(passed))
        prefix = dfs.next(s.decisions)
    # 4 arrivals, each task's own two in program order: C(4, 2) = 6 interleavings
    assert len(orders) == 6
    assert len(set(orders)) == 6
    for order in orders:
        for name in TASKS:
            mine = [lab for lab in order if lab.startswith(name + "@")]
            assert mine == [f"{name}@{p}#1" for p in POINTS]


def test_replay_follows_the_file(tmp_path: Path):
    s, passed = simulate(PCT(seed=7, depth=2, steps=4))
    sched = s.schedule({"strategy": "pct", "seed": 7})
    path = sched.write(tmp_path / "schedule.json")
    again = Schedule.read(path)
    assert again.key() == sched.key()
    for _ in range(3):
        r, replayed = simulate(Replay(again))
        assert r.error is None
        assert replayed == passed
        assert r.schedule().key() == sched.key()


def test_replay_of_an_edited_file(tmp_path: Path):
    """A person writes the order by hand: w1 first through both points, then w0."""
    path = tmp_path / "hand.json"
    path.write_text(
        '{"decisions": [{"step": 1, "go": "w1.mv@nfs:nfs_lookup#1"},'
        ' {"step": 2, "go": "w1.mv@nfs:nfs_open_context#1"}]}'
    )
    s, passed = simulate(Replay(Schedule.read(path)))
    assert s.error is None
    assert passed[:2] == ["w1.mv@nfs:nfs_lookup#1", "w1.mv@nfs:nfs_open_context#1"]
    assert passed[2:] == ["w0.cat@nfs:nfs_lookup#1", "w0.cat@nfs:nfs_open_context#1"]
    assert [d.forced for d in s.decisions] == [True, True, False, False]


def test_a_decision_that_cannot_be_taken_is_an_error_not_a_hang():
    bad = Schedule([Decision(1, "w2.ls@nfs:nfs_lookup#1", ("w2.ls@nfs:nfs_lookup#1",))])
    t0 = time.monotonic()
    s, passed = simulate(Replay(bad), replay_wait=0.3)
    elapsed = time.monotonic() - t0
    assert isinstance(s.error, ScheduleError)
    assert "decision 1 of the schedule cannot be taken: w2.ls@nfs:nfs_lookup#1" in str(s.error)
    assert "\n" not in str(s.error)
    assert len(passed) == 4  # every task was released and went on
    assert elapsed < 3.0


def test_an_unreached_decision_of_a_free_run_replay_leaves_the_rest_to_the_free_run(
    tmp_path: Path,
):
    """``"unreached": "free-run"`` in the file (forced mode's buggy order applied to a fix):
    the decisions are followed while their labels come; the first that does not come, within
    the settle bound, ends the replay, and the run goes on by the free run, without an error."""
    path = tmp_path / "borrowed.json"
    path.write_text(
        '{"unreached": "free-run", "decisions": [{"step": 1, "go": "w1.mv@nfs:nfs_lookup#1"},'
        ' {"step": 2, "go": "w2.ls@nfs:nfs_lookup#1"}, {"step": 3, "go": "w1.mv@nfs:x#1"}]}'
    )
    replay = Replay(Schedule.read(path))
    t0 = time.monotonic()
    s, passed = simulate(replay, replay_wait=30.0, settle=0.3)
    assert time.monotonic() - t0 < 10.0  # not the replay bound: the settle bound
    assert s.error is None
    assert len(passed) == 4 and passed[0] == "w1.mv@nfs:nfs_lookup#1"
    assert [d.forced for d in s.decisions] == [True, False, False, False]
    assert replay.abandoned is not None
    assert replay.abandoned.startswith("decision 2 (w2.ls@nfs:nfs_lookup#1) was not reached")
    with pytest.raises(ScheduleError, match="unreached must be one of error, free-run"):
        Replay(Schedule.read(path), unreached="skip")


def test_malformed_schedule_files(tmp_path: Path):
    p = tmp_path / "s.json"
    p.write_text("not json")
    with pytest.raises(ScheduleError, match="not JSON"):
        Schedule.read(p)
    p.write_text('{"decisions": [{"step": 2, "go": "a@p#1"}, {"step": 1, "go": "b@p#1"}]}')
    with pytest.raises(ScheduleError, match="decision 2 must have an increasing"):
        Schedule.read(p)
    with pytest.raises(ScheduleError, match="No such file"):
        Schedule.read(tmp_path / "missing.json")


def test_free_run_and_forced_subset():
    s, passed = simulate(FreeRun())
    assert s.error is None and len(passed) == 4
    assert not s.schedule().forced()
    sched = Schedule([Decision(1, "a@p#1", ("a@p#1", "b@p#1")), Decision(2, "b@p#1", ("b@p#1",))])
    assert [d.step for d in sched.forced()] == [1]
    assert forced_subset(sched, []).decisions == []


def test_minimise_keeps_the_decisions_the_failure_needs():
    from stackfs.kernel.sched import minimise

    decisions = [Decision(i, f"t{i % 2}@p#{i}", (f"t0@p#{i}", f"t1@p#{i}")) for i in range(1, 9)]
    sched = Schedule(decisions, {"scenario": "x"})
    # the failure needs steps 3 and 6 forced as they were, whatever the others do
    need = {3, 6}
    small, runs = minimise(sched, lambda s: need <= {d.step for d in s.decisions}, max_tests=40)
    assert {d.step for d in small.decisions} == need
    assert small.meta == {"scenario": "x"}
    assert runs <= 40
    # a failure that needs nothing forced minimises to the free run
    none, _ = minimise(sched, lambda s: True)
    assert none.decisions == []


def test_a_released_task_that_has_not_gone_yet_holds_the_next_decision():
    """The go is on its way (a daemon's task is told over a socket, by a thread the machine
    may not run at once): until the task took it (:meth:`Scheduler.wait` returned), the run
    has not moved, so neither quiescence nor the settle bound may decide the next step (seen:
    lustre's rename released, then the open released before the rename had left its point)."""
    s = Scheduler(FreeRun(), settle=0.02)
    first = s.arrive("w0.mv", "lustre2:mdt_reint_rename")
    s.arrive("w1.cat", "lustre:ll_file_open")
    stop = threading.Event()
    driver = threading.Thread(target=s.drive, args=(lambda _w: True, stop))
    driver.start()
    try:
        deadline = time.monotonic() + 5
        while not s.decisions and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [d.go for d in s.decisions] == ["w0.mv@lustre2:mdt_reint_rename#1"]
        time.sleep(0.3)  # quiescent all along, and well past the settle bound
        assert len(s.decisions) == 1, s.decisions
        assert s.wait(first, 1.0)  # the task takes its go: now the run may move on
        deadline = time.monotonic() + 5
        while len(s.decisions) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [d.go for d in s.decisions][1:] == ["w1.cat@lustre:ll_file_open#1"]
    finally:
        stop.set()
        driver.join(5.0)
        s.close()


def test_dfs_does_not_starve_a_waiting_task():
    """After its prefix DFS takes the first label in sorted order; a task that keeps arriving
    at new points (w0) must not hold another (w1) at its point past the fairness bound: a
    task held that long is reported hung by the watchdog once it blocks after its release
    (its FUSE request's wait counts from its start)."""
    p = Prefix([])
    n = 0
    for step in range(1, 4 * FAIR_BOUND):
        n += 1
        go, forced = p.choose(step, [f"w0.python@p#{n}", "w1.python@q#1"])
        assert forced
        if go == "w1.python@q#1":
            break
    else:
        raise AssertionError("w1 never went")
    assert step == FAIR_BOUND + 1
    # a prefix (DFS backtracking) is followed as given
    p = Prefix(["w0.python@p#1"] * 2)
    assert [p.choose(s, ["w0.python@p#1", "w1.python@q#1"])[0] for s in (1, 2)] == [
        "w0.python@p#1"
    ] * 2


@pytest.mark.parametrize(
    ("strategy", "limited"),
    [
        (Replay(Schedule([Decision(1, "w0.python@p#1", ("w0.python@p#1",))])), False),
        (Prefix([]), True),
    ],
    ids=["replay-past-its-file", "dfs"],
)
def test_the_decision_limit_counts_the_strategys_choices(strategy: Strategy, limited: bool):
    """``max_steps`` gives back a run that a strategy drives without end; a replay past its
    file is the free run under the scheduler (the earliest arrival goes, no choice), which
    the limit does not end (fixed-nofault's read case: ~160-230 page-ins and demotes)."""
    s = Scheduler(strategy, max_steps=3)
    for _ in range(8):
        t = s.arrive("w0.python", "p")
        s.step(True)
        if s.closed:
            break
        assert s.wait(t, 1.0)
    if limited:
        assert s.error is not None and "more than 3 decisions" in str(s.error)
    else:
        assert s.error is None and len(s.decisions) == 8
