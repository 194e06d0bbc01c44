"""The nfs_atomic_open / d_splice_alias race of seeds 002/003, played on the model.

A negative dentry for ``d`` is cached; on the server ``d`` has meanwhile become a directory.
Three ``ls`` tasks open it at once. Each revalidates the dentry (a round trip: it fails, so
d_invalidate), then nfs_atomic_open asks the server to OPEN it (``open_context``, the round trip
where the injection point ``nfs_open_context`` sits; the server says EISDIR), and goes to
``no_open:`` -> nfs_lookup -> d_splice_alias. A ``barrier:3`` at the injection point forces the
three into the window together.

* buggy (before Linux 4.7-rc3): d_drop only on ENOENT. The first d_splice_alias hashes the dentry;
  the other two hit ``BUG_ON(!d_unhashed(dentry))``: two oopses, one task passes (seed 003).
* fixed: d_drop on every open_context error, right before the lookup: no oops while
  nfs_lookup does not yield (the last test: when it does, the window 4.7-rc3 left).
* parallel-lookup: the open goes through an in-lookup dentry from d_alloc_parallel, so only one
  lookup of the name runs at a time; the barrier can never fill (it times out) and nobody oopses.

The last test shows why parallel lookups are the structural answer: if nfs_lookup's own round
trip separates d_drop from d_splice_alias, "fixed" oopses too, which is what seed 003 reports
("they both do d_drop(), the dentry is now unhashed, and they both dive into nfs_lookup()").
"""

from __future__ import annotations

import errno

import pytest
import trio

from stackfs.kernel.events import BARRIER_TIMEOUT, OOPS, Oops
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, calls, running_as

DIR = 1
NAME = b"d"
DIR_INO = 42  # what ``d`` is on the server now
POINT = "nfs_open_context"


class Server:
    """The NFS server: every call is a round trip (a trio checkpoint), except as configured."""

    def __init__(self, lookup_round_trip: bool) -> None:
        self.lookup_round_trip = lookup_round_trip

    async def lookup_revalidate(self, name: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        return False  # the cached negative dentry is stale: the name exists now

    async def open(self, name: bytes) -> int:
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EISDIR, "Is a directory")  # NFS4ERR_ISDIR

    async def lookup(self, name: bytes) -> int:
        if self.lookup_round_trip:
            await trio.lowlevel.checkpoint()
        return DIR_INO


async def nfs_atomic_open(state: KernelState, server: Server, dentry, variant: str) -> str:
    """fs/nfs/dir.c nfs_atomic_open() for a name that turns out to be a directory."""
    dc = state.dcache("nfs")
    with calls("nfs_atomic_open"):
        try:
            with calls("nfs4_atomic_open"):
                await state.inject.hit(POINT)
                await server.open(NAME)
        except OSError as err:
            if variant != "buggy" or err.errno == errno.ENOENT:
                dc.d_drop(dentry)
            # case -EISDIR: goto no_open
            with calls("nfs_lookup"):
                ino = await server.lookup(NAME)
                dc.d_splice_alias(ino, dentry)
            return "looked up"
    return "opened"


async def open_dir(state: KernelState, server: Server, variant: str) -> str:
    """open(2) of ``d``: path_openat -> lookup_open -> nfs_atomic_open, as each variant does."""
    dc = state.dcache("nfs")
    with calls("do_sys_open", "do_filp_open", "path_openat", "lookup_open"):
        dentry = dc.d_lookup(DIR, NAME)
        assert dentry is not None and dentry.negative
        with calls("nfs4_lookup_revalidate"):
            valid = await server.lookup_revalidate(NAME)
        if not valid:
            dc.d_invalidate(dentry)
        if variant != "parallel-lookup":
            with dc.ref(dentry):
                return await nfs_atomic_open(state, server, dentry, variant)
        dc.dput(dentry)
        dentry = await dc.d_alloc_parallel(DIR, NAME)
        with dc.ref(dentry):
            if not dentry.in_lookup:
                return "cached"  # another task's lookup hashed it: f_op->open, no atomic_open
            try:
                return await nfs_atomic_open(state, server, dentry, variant)
            finally:
                dc.d_lookup_done(dentry)


async def race(variant: str, lookup_round_trip: bool = False) -> tuple[KernelState, dict]:
    state = KernelState()
    state.inject.declare(POINT, "the OPEN round trip of nfs_atomic_open (open_context)")
    state.inject.configure(f"{POINT}=barrier:3:1")
    dc = state.dcache("nfs")
    cached = dc.d_alloc(DIR, NAME)
    dc.d_add(cached, None)  # the negative dentry in the cache
    dc.dput(cached)
    server = Server(lookup_round_trip)
    results: dict[int, str] = {}

    async def ls(pid: int) -> None:
        with running_as(Task(pid, "ls")):
            try:
                results[pid] = await open_dir(state, server, variant)
            except Oops:
                results[pid] = "EIO"

    async with trio.open_nursery() as nursery:
        for pid in (2689597, 2689619, 2689620):
            nursery.start_soon(ls, pid)
    return state, results


def oopses(state: KernelState) -> list[dict]:
    return state.events.of_type(OOPS)


async def test_buggy_two_of_three_oops(autojump_clock):
    state, results = await race("buggy")
    assert sorted(results.values()) == ["EIO", "EIO", "looked up"]  # one passes, as in seed 003
    evs = oopses(state)
    assert len(evs) == 2
    assert state.inject["nfs_open_context"].hits == 3
    assert state.events.of_type(BARRIER_TIMEOUT) == []  # the three really met in the window
    victims = {pid for pid, r in results.items() if r == "EIO"}
    assert {ev["tasks"][0]["pid"] for ev in evs} == victims
    for ev in evs:
        assert ev["detail"]["bug"] == "kernel BUG at fs/dcache.c!"
        assert ev["detail"]["function"] == "d_splice_alias"
        assert ev["tasks"][0]["comm"] == "ls"
        assert ev["tasks"][0]["chain"][-4:] == [
            "lookup_open",
            "nfs_atomic_open",
            "nfs_lookup",
            "d_splice_alias",
        ]
        assert ev["detail"]["dentry"]["name"] == "d"
    # "The dentry is 0xffff8800d3b6b178 in both cases."
    assert evs[0]["detail"]["dentry"]["id"] == evs[1]["detail"]["dentry"]["id"]
    # the first oops names the other unlucky task, still on its way to d_splice_alias
    assert [t["pid"] for t in evs[0]["tasks"]] == [
        evs[0]["tasks"][0]["pid"],
        *(victims - {evs[0]["tasks"][0]["pid"]}),
    ]
    assert "nfs_atomic_open" in evs[0]["tasks"][1]["chain"]


async def test_fixed_never_oopses(autojump_clock):
    state, results = await race("fixed")
    assert sorted(results.values()) == ["looked up"] * 3
    assert oopses(state) == []
    assert state.inject["nfs_open_context"].hits == 3
    assert state.events.of_type(BARRIER_TIMEOUT) == []


@pytest.mark.parametrize("lookup_round_trip", [False, True])
async def test_parallel_lookup_serialises_and_never_oopses(autojump_clock, lookup_round_trip):
    state, results = await race("parallel-lookup", lookup_round_trip)
    assert sorted(results.values()) == ["cached", "cached", "looked up"]
    assert oopses(state) == []
    # only one task ever reached open_context: the barrier could not fill
    assert state.inject["nfs_open_context"].hits == 1
    (timeout,) = state.events.of_type(BARRIER_TIMEOUT)
    assert timeout["detail"]["arrived"] == 1
    dentry = state.dcache("nfs").d_lookup(DIR, NAME)
    assert dentry.inode == DIR_INO and dentry.hashed


async def test_fixed_still_races_when_the_lookup_round_trip_separates_d_drop(autojump_clock):
    state, results = await race("fixed", lookup_round_trip=True)
    assert sorted(results.values()) == ["EIO", "EIO", "looked up"]
    assert len(oopses(state)) == 2
