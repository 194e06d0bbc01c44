"""lockdep: dependencies recorded once, inversions reported without a deadlock."""

from __future__ import annotations

import trio
import trio.testing

from stackfs.kernel.events import LOCK_INVERSION, EventLog
from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.locks import LockTable
from stackfs.kernel.task import Task, calls, running_as

MV = Task(201, "mv")
CP = Task(202, "cp")
LS = Task(203, "ls")


def table() -> tuple[LockTable, LockDep, EventLog]:
    events = EventLog()
    dep = LockDep(events)
    return LockTable(dep, events), dep, events


async def take_two(first, then, task: Task, chain: str) -> None:
    with running_as(task), calls("do_sys_" + chain):
        async with first.write_locked():
            with calls(chain + "_inner"):
                async with then.write_locked():
                    await trio.sleep(0)


async def test_abba_reported_without_deadlock():
    locks, dep, events = table()
    a = locks.i_rwsem(5, desc="/a (ino 5)")
    b = locks.i_rwsem(6, desc="/b (ino 6)")
    # one after the other: no deadlock happens, but the order is inverted
    await take_two(a, b, MV, "rename")
    assert events.of_type(LOCK_INVERSION) == []
    await take_two(b, a, CP, "link")
    (ev,) = events.of_type(LOCK_INVERSION)
    assert not a.is_locked() and not b.is_locked()

    assert [t["pid"] for t in ev["tasks"]] == [CP.pid, MV.pid]
    assert ev["tasks"][0]["chain"] == ["do_sys_link", "link_inner"]
    assert ev["tasks"][1]["chain"] == ["do_sys_rename", "rename_inner"]
    new, (old,) = ev["detail"]["new"], ev["detail"]["existing"]
    assert (new["first"], new["then"]) == ("i_rwsem ino:6", "i_rwsem ino:5")
    assert (old["first"], old["then"]) == ("i_rwsem ino:5", "i_rwsem ino:6")
    assert new["first_chain"] == ["do_sys_link"]
    assert old["first_chain"] == ["do_sys_rename"]
    assert ev["detail"]["cycle"] == ["i_rwsem ino:6", "i_rwsem ino:5", "i_rwsem ino:6"]
    scenario = "\n".join(ev["detail"]["scenario"])
    assert "Possible unsafe locking scenario" in scenario
    assert scenario.index("lock(i_rwsem ino:6);") < scenario.index("lock(i_rwsem ino:5);")
    assert "*** DEADLOCK ***" in scenario
    assert "cp/202" in ev["summary"] and "mv/201" in ev["summary"]

    # each pair recorded once, the inversion reported once
    await take_two(a, b, MV, "rename")
    await take_two(b, a, CP, "link")
    assert len(events.of_type(LOCK_INVERSION)) == 1
    order = dep.snapshot()
    assert [(o["first"], o["then"]) for o in order] == [
        ("i_rwsem ino:5", "i_rwsem ino:6"),
        ("i_rwsem ino:6", "i_rwsem ino:5"),
    ]
    assert order[0]["task"] == {"pid": MV.pid, "comm": "mv"}
    assert order[0]["chain"] == ["do_sys_rename", "rename_inner"]


async def test_concurrent_abba_is_reported_before_it_deadlocks(autojump_clock):
    """Both tasks hold their first lock; lockdep speaks at the second attempt."""
    locks, _, events = table()
    a, b = locks.i_rwsem(1), locks.i_rwsem(2)
    async with trio.open_nursery() as nursery:

        async def one(first, then, task):
            with running_as(task):
                await first.down_write()
                await trio.sleep(1)
                await then.down_write()

        nursery.start_soon(one, a, b, MV)
        nursery.start_soon(one, b, a, CP)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)
        # a real ABBA deadlock now: both wait for each other
        assert len(a.waiters) == len(b.waiters) == 1
        assert len(events.of_type(LOCK_INVERSION)) == 1
        nursery.cancel_scope.cancel()
    assert not a.waiters and not b.waiters


async def test_three_lock_cycle():
    locks, _, events = table()
    a, b, c = locks.i_rwsem(1), locks.i_rwsem(2), locks.i_rwsem(3)
    await take_two(a, b, MV, "x")
    await take_two(b, c, CP, "y")
    assert events.of_type(LOCK_INVERSION) == []
    await take_two(c, a, LS, "z")
    (ev,) = events.of_type(LOCK_INVERSION)
    assert ev["detail"]["cycle"] == [
        "i_rwsem ino:3",
        "i_rwsem ino:1",
        "i_rwsem ino:2",
        "i_rwsem ino:3",
    ]
    assert [t["pid"] for t in ev["tasks"]] == [LS.pid, MV.pid, CP.pid]
    assert "Chain exists of:" in ev["detail"]["scenario"]


async def test_consistent_order_and_nesting_is_silent():
    locks, dep, events = table()
    a, b = locks.i_rwsem(1), locks.i_rwsem(2)
    for task in (MV, CP, LS):
        await take_two(a, b, task, "ok")
    assert events.of_type(LOCK_INVERSION) == []
    assert len(dep.snapshot()) == 1
    assert dep.held_by(MV.pid) == []


async def test_trylock_adds_no_dependency():
    locks, dep, _ = table()
    a, b = locks.i_rwsem(1), locks.i_rwsem(2)
    await a.down_write(MV)
    assert b.down_write_trylock(MV)
    assert dep.snapshot() == []
    b.up_write(MV)
    a.up_write(MV)
