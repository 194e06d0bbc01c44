"""Dentry cache model: lookups, hashing, d_alloc_parallel, and the kernel's assertions."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from stackfs.kernel.dcache import DCache
from stackfs.kernel.events import OOPS, EventLog, Oops
from stackfs.kernel.task import Task, calls, running_as

DIR = 1


def dcache() -> tuple[DCache, EventLog]:
    events = EventLog()
    return DCache("nfs", events), events


def test_negative_and_positive_dentries():
    dc, _ = dcache()
    assert dc.d_lookup(DIR, b"f") is None
    d = dc.d_alloc(DIR, b"f")
    assert d.unhashed and d.negative and d.refs == 1
    assert dc.d_lookup(DIR, b"f") is None  # not hashed yet
    dc.d_add(d, None)  # a negative dentry
    found = dc.d_lookup(DIR, b"f")
    assert found is d and d.negative and d.refs == 2
    dc.dput(found)
    dc.d_drop(d)
    assert dc.d_lookup(DIR, b"f") is None
    dc.d_add(d, 7)
    assert dc.d_lookup(DIR, b"f").inode == 7
    assert d.to_json() == {
        "id": d.id,
        "parent": DIR,
        "name": "f",
        "inode": 7,
        "hashed": True,
        "in_lookup": False,
        "refs": 2,
    }


def test_d_invalidate_drops_the_subtree():
    dc, _ = dcache()
    sub = dc.d_alloc(DIR, "sub")
    dc.d_add(sub, 10)
    child = dc.d_alloc(10, "x")
    dc.d_add(child, 11)
    other = dc.d_alloc(DIR, "y")
    dc.d_add(other, 12)
    dc.d_invalidate(sub)
    assert sub.unhashed and child.unhashed and other.hashed
    dc.d_invalidate(sub)  # twice: nothing


def test_d_add_on_hashed_dentry_oopses():
    dc, events = dcache()
    d = dc.d_alloc(DIR, b"f")
    dc.d_add(d, None)
    with running_as(Task(42, "touch")), calls("do_sys_open", "lookup_open", "foo_lookup"):
        with pytest.raises(Oops) as info:
            dc.d_add(d, 5)
    (ev,) = events.of_type(OOPS)
    assert info.value.event is ev
    assert ev["detail"]["site"] == "__d_rehash"
    assert ev["detail"]["assertion"] == "BUG_ON(!d_unhashed(entry))"
    assert ev["detail"]["lines"][1] == "kernel BUG at fs/dcache.c!"  # no made-up line
    assert "RIP: 0010:d_add" in ev["detail"]["lines"]
    assert ev["tasks"][0] == {
        "pid": 42,
        "comm": "touch",
        "chain": ["do_sys_open", "lookup_open", "foo_lookup", "d_add"],
    }
    assert d.negative  # the failed call changed nothing


def test_d_instantiate_twice_oopses():
    dc, events = dcache()
    d = dc.d_alloc(DIR, "f")
    dc.d_instantiate(d, 3)
    assert d.inode == 3 and d.unhashed
    with pytest.raises(Oops):
        dc.d_instantiate(d, 4)
    (ev,) = events.of_type(OOPS)
    assert ev["detail"]["function"] == "d_instantiate"
    assert "RIP: d_instantiate" in ev["summary"]
    assert d.inode == 3


async def test_d_splice_alias_on_hashed_dentry_names_racing_tasks():
    dc, events = dcache()
    d = dc.d_alloc(DIR, b"f")
    dc.d_add(d, None)
    dc.dput(d)
    inside = trio.Event()
    release = trio.Event()

    async def bystander():
        with running_as(Task(301, "ls")), calls("do_sys_open", "nfs_atomic_open"):
            with dc.ref(dc.d_lookup(DIR, b"f")):
                with calls("nfs_lookup"):
                    inside.set()
                    await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bystander)
        await inside.wait()
        with running_as(Task(302, "ls")), calls("do_sys_open", "nfs_atomic_open", "nfs_lookup"):
            with dc.ref(dc.d_lookup(DIR, b"f")), pytest.raises(Oops):
                dc.d_splice_alias(9, d)
        release.set()
    (ev,) = events.of_type(OOPS)
    assert ev["detail"]["bug"] == "kernel BUG at fs/dcache.c!"
    assert ev["detail"]["function"] == "d_splice_alias"
    assert [t["pid"] for t in ev["tasks"]] == [302, 301]
    assert ev["tasks"][0]["chain"][-2:] == ["nfs_lookup", "d_splice_alias"]
    assert ev["tasks"][1]["chain"] == ["do_sys_open", "nfs_atomic_open", "nfs_lookup"]
    assert ev["detail"]["dentry"]["id"] == d.id
    assert ev["detail"]["lines"][-3:] == [" nfs_lookup", " nfs_atomic_open", " do_sys_open"]
    assert "invalid opcode: 0000 [#1] SMP" in ev["summary"]
    assert d.refs == 0


async def test_d_alloc_parallel_waits_for_the_lookup_in_progress():
    dc, _ = dcache()
    first = await dc.d_alloc_parallel(DIR, b"n")
    assert first.in_lookup and first.unhashed
    got = []

    async def second():
        with running_as(Task(5, "stat")):
            got.append(await dc.d_alloc_parallel(DIR, b"n"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and first.refs == 2  # the waiter holds a reference
        dc.d_splice_alias(77, first)  # ends the lookup, wakes the waiter
    assert got == [first]
    assert not first.in_lookup and first.hashed and first.inode == 77
    assert (await dc.d_alloc_parallel(DIR, b"n")) is first  # now simply found


async def test_d_alloc_parallel_retries_when_the_lookup_failed():
    dc, _ = dcache()
    first = await dc.d_alloc_parallel(DIR, b"n")
    got = []

    async def second():
        got.append(await dc.d_alloc_parallel(DIR, b"n"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        dc.d_lookup_done(first)  # the lookup failed and did not hash it
    (mine,) = got
    assert mine is not first and mine.in_lookup  # the waiter now owns a fresh lookup
    dc.d_lookup_done(mine)


async def test_d_alloc_parallel_wait_is_cancellable(autojump_clock):
    dc, _ = dcache()
    first = await dc.d_alloc_parallel(DIR, b"n")
    with trio.move_on_after(5) as cs:
        await dc.d_alloc_parallel(DIR, b"n")
    assert cs.cancelled_caught
    assert first.refs == 1
    dc.d_add(first, None)
    assert first.hashed and first.negative


def test_dput_without_reference_is_an_error():
    dc, _ = dcache()
    d = dc.d_alloc(DIR, b"n")
    dc.dput(d)
    with pytest.raises(ValueError):
        dc.dput(d)
