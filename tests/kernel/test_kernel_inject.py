"""Injection points: spec parsing, delay, error, barrier (release, timeout, re-arm)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from stackfs.kernel.events import BARRIER_TIMEOUT, EventLog
from stackfs.kernel.inject import Action, InjectionPoints, parse_action, parse_spec
from stackfs.kernel.task import Task, calls, running_as

P = "nfs_open_context"


def points(action: str | None = None) -> tuple[InjectionPoints, EventLog]:
    events = EventLog()
    pts = InjectionPoints(events)
    pts.declare(P, "the OPEN round trip")
    if action is not None:
        pts.set(P, action)
    return pts, events


# -- parsing ------------------------------------------------------------------------------------


def test_parse_actions():
    assert parse_action("off") == Action("off")
    assert parse_action("delay:0.5") == Action("delay", seconds=0.5)
    assert parse_action("barrier:3") == Action("barrier", n=3, timeout=10.0)
    assert parse_action("barrier:2:0.25") == Action("barrier", n=2, timeout=0.25)
    assert parse_action("error:EIO") == Action("error", errno=errno.EIO)
    assert parse_action("error:estale") == Action("error", errno=errno.ESTALE)
    assert str(parse_action("barrier:2:0.25")) == "barrier:2:0.25"
    assert str(parse_action("error:EISDIR")) == "error:EISDIR"
    assert parse_spec("nfs_open_context=barrier:3") == (P, Action("barrier", n=3, timeout=10.0))


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "on",
        "delay",
        "delay:",
        "delay:-1",
        "delay:soon",
        "delay:inf",
        "barrier:0",
        "barrier:x",
        "barrier:2:0",
        "barrier:2:-1",
        "error:",
        "error:EBOGUS",
        "error:errorcode",
        "off:1",
    ],
)
def test_bad_actions_are_one_line_value_errors(spec):
    with pytest.raises(ValueError) as info:
        parse_action(spec)
    assert "\n" not in str(info.value)


def test_bad_specs_and_unknown_points():
    pts, _ = points()
    for spec in ("nfs_open_context", "=off", "nfs_open_contextoff"):
        with pytest.raises(ValueError, match="POINT=ACTION"):
            pts.configure(spec)
    with pytest.raises(ValueError, match="unknown injection point 'nope'.*nfs_open_context"):
        pts.configure("nope=off")
    with pytest.raises(ValueError, match="bad injection action"):
        pts.configure("nfs_open_context=sometimes")
    assert pts.configure("nfs_open_context=delay:1")[0] == P
    assert pts.snapshot()[0]["action"] == "delay:1"


async def test_hit_of_undeclared_point_raises():
    pts, _ = points()
    with pytest.raises(ValueError, match="unknown injection point"):
        await pts.hit("nope")


# -- actions ------------------------------------------------------------------------------------


async def test_off_counts_hits_and_is_no_checkpoint():
    pts, _ = points()
    with trio.CancelScope() as cs:
        cs.cancel()
        await pts.hit(P)  # would raise Cancelled if it were a checkpoint
        await pts.hit(P)
    assert pts[P].hits == 2


async def test_error():
    pts, _ = points("error:ESTALE")
    with pytest.raises(OSError) as info:
        await pts.hit(P)
    assert info.value.errno == errno.ESTALE
    assert pts[P].hits == 1


async def test_delay_shows_waiting_task(autojump_clock):
    pts, _ = points("delay:5")
    async with trio.open_nursery() as nursery:

        async def hit():
            with running_as(Task(9, "cat")):
                await pts.hit(P)

        nursery.start_soon(hit)
        await trio.testing.wait_all_tasks_blocked()
        assert pts.snapshot()[0]["waiting"] == [{"pid": 9, "comm": "cat"}]
        t0 = trio.current_time()
    assert trio.current_time() - t0 == pytest.approx(5)
    assert pts.snapshot()[0]["waiting"] == []


async def arrive(pts, log, pid, delay=0.0):
    await trio.sleep(delay)
    with running_as(Task(pid, f"p{pid}")), calls("nfs_atomic_open"):
        await pts.hit(P)
    log.append((pid, trio.current_time()))


async def test_barrier_releases_together(autojump_clock):
    pts, events = points("barrier:3:100")
    log: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 1, 0)
        nursery.start_soon(arrive, pts, log, 2, 1)
        await trio.sleep(2)
        assert log == []
        assert sorted(t["pid"] for t in pts.snapshot()[0]["waiting"]) == [1, 2]
        nursery.start_soon(arrive, pts, log, 3, 3)
    assert sorted(p for p, _ in log) == [1, 2, 3]
    assert {t for _, t in log} == {5.0}  # all released when the third came (2 + 3)
    assert events.of_type(BARRIER_TIMEOUT) == []
    assert pts[P].hits == 3 and pts.snapshot()[0]["waiting"] == []


async def test_barrier_timeout_releases_and_records(autojump_clock):
    pts, events = points("barrier:3:2")
    log: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 1, 0)
        nursery.start_soon(arrive, pts, log, 2, 1)
    assert {t for _, t in log} == {2.0}  # the first arrival's timeout released both
    (ev,) = events.of_type(BARRIER_TIMEOUT)
    assert ev["detail"] == {"point": P, "n": 3, "arrived": 2, "timeout": 2.0}
    assert sorted(t["pid"] for t in ev["tasks"]) == [1, 2]
    assert ev["tasks"][0]["chain"] == ["nfs_atomic_open"]
    # re-armed: the next two arrivals are held again
    log.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 4, 0)
        nursery.start_soon(arrive, pts, log, 5, 0.5)
        nursery.start_soon(arrive, pts, log, 6, 1)
    assert len(log) == 3 and len({t for _, t in log}) == 1
    assert len(events.of_type(BARRIER_TIMEOUT)) == 1


async def test_barrier_rearms_for_repeated_rounds(autojump_clock):
    pts, events = points("barrier:2:100")
    for rnd in range(3):
        log: list[tuple[int, float]] = []
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(arrive, pts, log, 10 * rnd + 1, 0)
            nursery.start_soon(arrive, pts, log, 10 * rnd + 2, 7)
        assert [t - start for _, t in log] == [7, 7]
    assert pts[P].hits == 6
    assert events.of_type(BARRIER_TIMEOUT) == []


async def test_barrier_passes_arrivals_while_a_round_is_leaving(autojump_clock):
    pts, events = points("barrier:2:100")
    log: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        # three arrivals in one scheduling step: the first waits, the second releases the
        # round, the third comes while the round is still on its way out and passes through
        for pid in (1, 2, 3):
            nursery.start_soon(arrive, pts, log, pid, 0)
    assert sorted(log) == [(1, 0.0), (2, 0.0), (3, 0.0)]
    assert pts[P].hits == 3
    assert events.of_type(BARRIER_TIMEOUT) == []
    # then the barrier is armed again: a lone arrival waits for its partner
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 4, 0)
        nursery.start_soon(arrive, pts, log, 5, 9)
    assert log[-2:] == [(4, 9.0), (5, 9.0)] or log[-2:] == [(5, 9.0), (4, 9.0)]
    assert pts.snapshot()[0]["waiting"] == []


async def test_cancelled_barrier_waiter_leaves_no_trace(autojump_clock):
    pts, events = points("barrier:2:100")
    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def hit():
            with cancel:
                await pts.hit(P)

        nursery.start_soon(hit)
        await trio.testing.wait_all_tasks_blocked()
        assert len(pts.snapshot()[0]["waiting"]) == 1
        cancel.cancel()
    assert pts.snapshot()[0]["waiting"] == []
    # the round is empty again: two new arrivals meet each other
    log: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 1, 0)
        nursery.start_soon(arrive, pts, log, 2, 3)
    assert {t for _, t in log} == {3.0}
    assert events.of_type(BARRIER_TIMEOUT) == []


async def test_setting_a_new_action_releases_waiters(autojump_clock):
    pts, events = points("barrier:5:100")
    log: list[tuple[int, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrive, pts, log, 1, 0)
        nursery.start_soon(arrive, pts, log, 2, 0)
        await trio.sleep(4)
        pts.configure(f"{P}=off")
    assert {t for _, t in log} == {4.0}
    assert events.of_type(BARRIER_TIMEOUT) == []
    assert pts.snapshot()[0]["action"] == "off"
