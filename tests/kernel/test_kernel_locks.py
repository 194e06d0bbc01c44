"""i_rwsem semantics, recursive locking, cancellation (stackfs.kernel.locks)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from stackfs.kernel.events import RECURSIVE_LOCKING, EventLog
from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.locks import (
    READ,
    WRITE,
    LockTable,
    RWSem,
    UnlockError,
    inode_lock,
    inode_lock_shared,
    inode_unlock,
    inode_unlock_shared,
)
from stackfs.kernel.task import Task, calls, running_as

A, B, C, D = (Task(100 + i, f"t{i}") for i in range(4))


def table() -> tuple[LockTable, EventLog]:
    events = EventLog()
    return LockTable(LockDep(events), events), events


async def still_blocked(coro_fn, *args, seconds: float = 5.0) -> bool:
    """True if ``coro_fn(*args)`` was still waiting after ``seconds`` (then it is cancelled)."""
    with trio.move_on_after(seconds) as cs:
        await coro_fn(*args)
    return cs.cancelled_caught


async def test_readers_share_writer_excludes(autojump_clock):
    sem = table()[0].i_rwsem(5, desc="/f (ino 5)")
    await sem.down_read(A)
    await sem.down_read(B)
    assert [h.mode for h in sem.holders] == [READ, READ]
    assert await still_blocked(sem.down_write, C)
    assert not sem.waiters  # the cancelled waiter left no trace
    sem.up_read(A)
    sem.up_read(B)
    await sem.down_write(C)
    assert await still_blocked(sem.down_read, D)
    sem.up_write(C)
    assert not sem.is_locked()


async def test_fifo_waiting_writer_blocks_new_readers(autojump_clock):
    sem = RWSem("i_rwsem", "ino:1")
    order: list[str] = []
    await sem.down_read(A)

    async def take(task: Task, mode: str) -> None:
        await (sem.down_write(task) if mode == WRITE else sem.down_read(task))
        order.append(f"{task.comm}:{mode}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, B, WRITE)
        await trio.testing.wait_all_tasks_blocked()
        # a reader arriving while a writer waits must queue behind it, although A reads
        nursery.start_soon(take, C, READ)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, D, READ)
        await trio.testing.wait_all_tasks_blocked()
        assert [w.task for w in sem.waiters] == [B, C, D]
        assert [h.task for h in sem.holders] == [A]
        sem.up_read(A)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["t1:write"]
        assert [w.task for w in sem.waiters] == [C, D]
        sem.up_write(B)
        await trio.testing.wait_all_tasks_blocked()
        # the run of readers at the head is granted together
        assert sorted(order[1:]) == ["t2:read", "t3:read"]
        assert {h.task for h in sem.holders} == {C, D}
        sem.up_read(C)
        sem.up_read(D)


async def test_recursive_write_lock_blocks_and_is_recorded(autojump_clock):
    locks, events = table()
    sem = locks.i_rwsem(5, desc="/a/f (ino 5)")
    with running_as(A), calls("au_cpup_single", "vfs_setxattr"):
        await inode_lock(sem)
    with running_as(A), calls("do_sys_open", "afs_linux_open", "osi_VM_FlushPages"):
        # the same task asks again: it waits forever (here: at least 30 s), like an rwsem
        assert await still_blocked(inode_lock, sem, seconds=30)
    assert not sem.waiters
    assert [h.task for h in sem.holders] == [A]
    (ev,) = events.of_type(RECURSIVE_LOCKING)
    assert ev["tasks"][0]["chain"] == ["do_sys_open", "afs_linux_open", "osi_VM_FlushPages"]
    assert ev["tasks"][1]["chain"] == ["au_cpup_single", "vfs_setxattr"]
    assert ev["tasks"][0]["pid"] == ev["tasks"][1]["pid"] == A.pid
    assert ev["detail"]["blocks"] is True
    assert ev["detail"]["lock"] == "i_rwsem ino:5"
    assert "recursive locking" in ev["summary"] and "/a/f" in ev["summary"]
    with running_as(A):
        inode_unlock(sem)
    assert not sem.is_locked()


async def test_recursive_read_blocks_behind_waiting_writer(autojump_clock):
    locks, events = table()
    sem = locks.i_rwsem(9)
    await sem.down_read(A)
    # a second read without writers waiting is granted (as the kernel does), but reported
    await sem.down_read(A)
    assert len(events.of_type(RECURSIVE_LOCKING)) == 1
    assert events.of_type(RECURSIVE_LOCKING)[0]["detail"]["blocks"] is False
    sem.up_read(A)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sem.down_write, B)
        await trio.testing.wait_all_tasks_blocked()
        assert await still_blocked(sem.down_read, A)
        assert len(events.of_type(RECURSIVE_LOCKING)) == 2
        assert events.of_type(RECURSIVE_LOCKING)[1]["detail"]["blocks"] is True
        sem.up_read(A)
    assert sem.held_by(B) == WRITE
    sem.up_write(B)


async def test_cancelled_waiter_lets_readers_behind_it_in(autojump_clock):
    sem = RWSem("i_rwsem", "ino:3")
    await sem.down_read(A)
    got = []
    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()

        async def writer():
            with cancel:
                await sem.down_write(B)

        async def reader():
            await sem.down_read(C)
            got.append(C)

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        cancel.cancel()  # daemon shutdown: the writer gives up
        await trio.testing.wait_all_tasks_blocked()
        assert got == [C]
    assert not sem.waiters
    assert {h.task for h in sem.holders} == {A, C}


async def test_unlock_balance():
    sem = RWSem("i_rwsem", "ino:4")
    with pytest.raises(UnlockError):
        sem.up_write(A)
    await sem.down_write(A)
    with pytest.raises(UnlockError):
        sem.up_read(A)
    with pytest.raises(UnlockError):
        sem.up_write(B)
    sem.up_write(A)


async def test_trylock_and_context_managers():
    sem = RWSem("i_rwsem", "ino:6")
    assert sem.down_write_trylock(A)
    assert not sem.down_read_trylock(B)
    sem.up_write(A)
    async with sem.read_locked(A):
        async with sem.read_locked(B):
            assert len(sem.holders) == 2
    assert not sem.is_locked()
    with running_as(C):
        await inode_lock_shared(sem)
        assert sem.held_by(C) == READ
        inode_unlock_shared(sem)


async def test_lock_table_snapshot(autojump_clock):
    locks, _ = table()
    assert locks.i_rwsem(5) is locks.get("i_rwsem", "ino:5")
    sem = locks.i_rwsem(5, desc="/f (ino 5)")
    assert locks.i_rwsem(5).desc == "/f (ino 5)"
    locks.get("i_rwsem", "ino:6")  # idle locks are not in the snapshot
    with running_as(A), calls("do_truncate"):
        await sem.down_write()
    async with trio.open_nursery() as nursery:

        async def wait_for_it():
            with running_as(B), calls("path_openat", "do_open"):
                await sem.down_read()

        nursery.start_soon(wait_for_it)
        await trio.testing.wait_all_tasks_blocked()
        (entry,) = locks.snapshot()
        assert entry["name"] == "i_rwsem" and entry["key"] == "ino:5"
        assert entry["desc"] == "/f (ino 5)"
        assert entry["holders"][0]["task"] == {"pid": A.pid, "comm": A.comm}
        assert entry["holders"][0]["mode"] == WRITE
        assert entry["holders"][0]["chain"] == ["do_truncate"]
        assert entry["waiters"][0]["task"]["pid"] == B.pid
        assert entry["waiters"][0]["chain"] == ["path_openat", "do_open"]
        assert entry["waiters"][0]["since"] >= entry["holders"][0]["since"]
        sem.up_write(A)
    sem.up_read(B)
    assert locks.snapshot() == []
