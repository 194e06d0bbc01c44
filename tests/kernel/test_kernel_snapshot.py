"""The state snapshot's types (stackfs/kernel/snapshot.py): a model's JSON answer, parsed once,
read by attribute; a field of the wrong type (the answer comes from another process) reads as
absent."""

from __future__ import annotations

import json

import trio
import trio.testing

from stackfs.kernel import snapshot
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, calls, running_as


def test_a_models_snapshot_parses_into_attributes():
    state = KernelState()
    state.events.release = "4.7-rc1"
    state.inject.declare("p", "a point")
    state.inject.set("p", "barrier:2:5")

    async def main() -> dict:
        lock = state.locks.i_rwsem(5, "/a")
        rid = state.inflight.begin("open", 5, b"f", Task(9, "mv"))
        state.inflight.set_worker(rid, 12)
        with running_as(Task(9, "mv")), calls("do_sys_open", "inode_lock"):
            await lock.down_write()
        async with trio.open_nursery() as n:
            with running_as(Task(10, "cat")), calls("vfs_read"):
                n.start_soon(lock.down_read)
                await trio.testing.wait_all_tasks_blocked()
            state.events.record("oops", "BUG", [{"pid": 9, "comm": "mv", "chain": ["x"]}], {})
            # what the watchdog gets: the JSON a daemon's control socket sends
            wire = json.loads(json.dumps(state.snapshot()))
            n.cancel_scope.cancel()
        return wire

    wire = trio.run(main)
    snap = snapshot.parse(wire)
    [req] = snap.inflight
    assert (req.op, req.ino, req.name, req.pid, req.worker) == ("open", 5, "f", 9, 12)
    assert req.task is not None and req.task.comm == "mv"
    assert req.raw == wire["inflight"][0]  # the wire form, for what is written back out
    [lock] = snap.locks
    assert lock.ident == "i_rwsem ino:5" and lock.desc == "/a" and lock.scope is None
    [holder] = lock.holders
    assert holder.pid == 9 and holder.mode == "write" and holder.chain[-1] == "inode_lock"
    [waiter] = lock.waiters
    assert waiter.pid == 10 and waiter.mode == "read"
    [ev] = snap.events
    assert ev.type == "oops" and ev.release == "4.7-rc1" and ev.raw["tasks"][0]["pid"] == 9
    [point] = snap.inject
    assert point.point == "p" and point.action.startswith("barrier:2")


def test_wrong_types_read_as_absent_never_raise():
    wire = {
        "inflight": [{"id": "7", "op": 3, "task": {"pid": "9"}, "worker": [1], "age": True}],
        "locks": [{"name": None, "holders": [{"task": "x", "chain": "abc"}], "waiters": {}}],
        "events": ["not an event", {"type": "oops", "time": "soon"}],
        "completions": [{"holder": 5, "waiters": [None]}],
        "inject": "nothing",
    }
    snap = snapshot.parse(wire)
    [req] = snap.inflight
    assert (req.id, req.op, req.pid, req.worker, req.age) == (None, None, None, None, None)
    [lock] = snap.locks
    assert lock.name == "lock" and lock.holders[0].task is None and lock.waiters == ()
    assert [e.type for e in snap.events] == ["oops"] and snap.events[0].time is None
    assert snap.completions[0].holder is None and snap.completions[0].waiters[0].pid is None
    assert snap.inject == ()
    assert snapshot.parse(None) == snapshot.KernelSnapshot()
