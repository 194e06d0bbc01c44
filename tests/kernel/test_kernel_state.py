"""KernelState snapshot (the schema of docs/ARCHITECTURE.md) and the in-flight table."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import trio
import trio.testing

from stackfs.kernel.events import OOPS, Oops
from stackfs.kernel.inflight import InflightTable
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, calls, running_as

SNAPSHOT_KEYS = {"inflight", "locks", "lock_order", "events", "inject", "completions"}


def test_inflight_begin_end_worker():
    table = InflightTable()
    me = os.getpid()
    a = table.begin("lookup", 1, b"f\xff", me)
    b = table.begin("read", None, None, Task(5, "cat"), fh=3)
    assert a != b and len(table) == 2

    def worker():
        table.set_worker(a)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    snap = table.snapshot(now=time.time() + 1)
    first, second = snap
    assert first["op"] == "lookup" and first["ino"] == 1
    assert first["name"] == os.fsdecode(b"f\xff")
    assert first["task"]["pid"] == me and first["task"]["comm"]  # comm read at snapshot time
    assert first["worker"] == {"tid": t.native_id}
    assert first["age"] >= 1.0
    assert second["task"] == {"pid": 5, "comm": "cat"}
    assert second["worker"] is None and second["fh"] == 3
    json.dumps(snap)
    table.end(a)
    table.end(a)  # twice: ignored
    table.set_worker(a, 1)  # after the end: ignored
    assert [r["id"] for r in table.snapshot()] == [b]


def test_inflight_is_cheap(monkeypatch):
    """begin/end run on every request: they record a bare pid without reading /proc (the comm
    is read at snapshot time) and leave nothing behind. Their speed, against a bare dict
    insert/pop measured in the same run, is bench/inflight_bench.py's (no timing here)."""

    def no_proc(*_a, **_k):
        raise AssertionError("begin/end must not read /proc")

    monkeypatch.setattr(Task, "from_pid", no_proc)
    table = InflightTable()
    for i in range(1000):
        rid = table.begin("getattr", i, None, 1234)
        assert len(table) == 1
        table.end(rid)
    assert len(table) == 0
    rid = table.begin("getattr", 1, b"f", 1234)
    assert not hasattr(table.get(rid), "__dict__")  # __slots__: one small object a request


async def test_snapshot_is_json_and_in_schema(autojump_clock):
    state = KernelState()
    state.inject.declare("afs_open", "afs_linux_open's round trip")
    state.inject.configure("afs_open=barrier:2:1")
    state.inflight.begin("open", 5, None, Task(9, "mv"))
    a, b = state.locks.i_rwsem(5, desc="/f (ino 5)"), state.locks.i_rwsem(6, desc="/g (ino 6)")
    with running_as(Task(9, "mv")), calls("au_cpup_single"):
        await a.down_write()
        await b.down_write()
        b.up_write()
        a.up_write()
    with running_as(Task(10, "cp")), calls("vfs_link"):
        await b.down_write()
        await a.down_write()  # inversion
    async with trio.open_nursery() as nursery:

        async def blocked():
            with running_as(Task(11, "cat")):
                await a.down_read()

        nursery.start_soon(blocked)
        nursery.start_soon(state.inject.hit, "afs_open")  # times out after 1 s
        await trio.testing.wait_all_tasks_blocked()
        snap = state.snapshot()
        assert set(snap) == SNAPSHOT_KEYS
        text = json.dumps(snap)
        assert json.loads(text) == snap
        (lock,) = [x for x in snap["locks"] if x["key"] == "ino:5"]
        assert lock["holders"][0]["task"]["pid"] == 10
        assert lock["waiters"][0]["task"] == {"pid": 11, "comm": "cat"}
        assert [(o["first"], o["then"]) for o in snap["lock_order"]] == [
            ("i_rwsem ino:5", "i_rwsem ino:6"),
            ("i_rwsem ino:6", "i_rwsem ino:5"),
        ]
        assert [e["type"] for e in snap["events"]] == ["lock_inversion"]
        for event in snap["events"]:
            assert set(event) == {"type", "time", "summary", "tasks", "detail"}
        (point,) = snap["inject"]
        assert point["point"] == "afs_open" and point["action"] == "barrier:2:1"
        assert point["hits"] == 1 and len(point["waiting"]) == 1
        (req,) = snap["inflight"]
        assert req["task"] == {"pid": 9, "comm": "mv"} and req["op"] == "open"
        with running_as(Task(10, "cp")):
            b.up_write()
            a.up_write()
    a.up_read(Task(11, "cat"))
    assert [e["type"] for e in state.snapshot()["events"]] == ["lock_inversion", "barrier_timeout"]
    json.dumps(state.snapshot())


def test_oops_hooks_and_panic_flag():
    state = KernelState(panic_on_oops=True)
    seen = []
    state.on_oops.append(seen.append)
    dc = state.dcache("sb1")
    assert state.dcache("sb1") is dc and state.dcache("sb2") is not dc
    d = dc.d_alloc(1, "x")
    dc.d_add(d, 2)
    with pytest.raises(Oops) as info:
        dc.d_splice_alias(2, d)
    assert seen == [info.value.event]
    assert state.oopses == 1 and state.panic_on_oops
    assert state.snapshot()["events"][0]["type"] == OOPS
    json.dumps(state.snapshot())


def test_events_are_bounded():
    state = KernelState(max_events=3)
    for i in range(5):
        state.events.record("barrier_timeout", f"#{i}")
    assert [e["summary"] for e in state.snapshot()["events"]] == ["#2", "#3", "#4"]
    assert state.events.counts["barrier_timeout"] == 5
