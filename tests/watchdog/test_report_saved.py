"""A saved report.json is the live report: its findings parse to the same typed objects and
render to the same kernel log records (issue 25 item 2: one typed state schema)."""

from __future__ import annotations

import json

import trio
import trio.testing
from test_watchdog_model import FUSE_OPEN_STACK, NoScanner, _aufs_over_afs_states, _task, _view

from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, calls, running_as
from stackfs.watchdog import findings, graph, kernfmt
from stackfs.watchdog.detect import Detector, Hang
from stackfs.watchdog.report import Report


def _live_report() -> Report:
    """Seed 000's one-task cycle across two layers (modelled i_rwsem, worker thread), with
    both tasks hung in state D, plus a modelled oops and a lockdep inversion on a third
    daemon: every kind of record kernfmt writes."""
    union_state, afs_state = _aufs_over_afs_states()
    other = KernelState()

    async def oops() -> None:
        dc = other.dcache("nfs")
        with running_as(Task(4242, "ls")), calls("do_sys_open", "nfs_atomic_open", "nfs_lookup"):
            d = dc.d_alloc(1, "f")
            dc.d_add(d, 5)
            try:
                dc.d_splice_alias(6, d)
            except Exception:  # noqa: BLE001 - the model's Oops
                pass

    trio.run(oops)
    dep = LockDep(other.events)
    a, b = Task(1, "t1"), Task(2, "t2")
    dep.lock_acquire(a, "i_rwsem ino:5", "write", ("vfs_rename",))
    dep.lock_acquire(a, "i_rwsem ino:6", "write", ("lock_two_directories",))
    dep.lock_release(a, "i_rwsem ino:6")
    dep.lock_release(a, "i_rwsem ino:5")
    dep.lock_acquire(b, "i_rwsem ino:6", "write", ("do_truncate",))
    dep.lock_acquire(b, "i_rwsem ino:5", "write", ("notify_change",))
    views = {
        50: _view(50, 1000, "union", union_state),
        51: _view(51, 2000, "afs", afs_state),
        53: _view(53, 4000, "nfs", other.snapshot()),
    }
    tasks = {
        77: _task(77, "mv", FUSE_OPEN_STACK, 50, "/m/union/b", state="D", name="renameat2"),
        78: _task(78, "python3", FUSE_OPEN_STACK, 51, "/m/afs/a", pid=1000, state="D"),
    }
    g = graph.build(tasks, views, NoScanner(), {50: 1, 51: 1})
    [cycle] = graph.find_cycles(g)
    det = Detector(since=0.0)
    hangs = det.hangs(tasks, set(tasks), views, {50: 1, 51: 1}, now=10.0)
    assert [h.task.tid for h in hangs] == [77, 78] and all(isinstance(h, Hang) for h in hangs)
    return Report(
        "deadlock",
        cycle.summary,
        10.0,
        1.0,
        hangs=hangs,
        cycle=cycle,
        cycles=[cycle],
        graph=g,
        daemons=views,
        events=det.new_events(views),
        waiting={50: 1, 51: 1},
    )


def test_saved_report_json_renders_like_the_live_report(tmp_path):
    r = _live_report()
    r.write(tmp_path, picture=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    live = [x.text for x in kernfmt.render(r.findings(), tainted="Not tainted")]
    again = [x.text for x in kernfmt.render(saved, tainted="Not tainted")]
    assert again == live
    # every kind of record is there, so the comparison covers every reader
    for line in (
        "INFO: task mv:77 blocked for more than 9 seconds.",
        "Showing all locks held in the system:",
        "WARNING: possible circular locking dependency detected",
        "------------[ cut here ]------------",
    ):
        assert line in live, line
    # report.txt is the same records, without the tag
    text = (tmp_path / "report.txt").read_text().splitlines()
    i = text.index("INFO: task mv:77 blocked for more than 9 seconds.")
    assert text[i + 2 : i + 4] == live[2:4]


def test_saved_graph_keeps_its_wire_form(tmp_path):
    """Parsed back, every node's and edge's attributes write the JSON they were read from."""
    r = _live_report()
    r.write(tmp_path, picture=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    f = findings.parse(saved)
    assert [n.to_json() for n in f.nodes.values()] == saved["graph"]["nodes"]
    edges = [e for e in saved["graph"]["edges"] if e["kind"] != "context"]
    assert [e.to_json() for e in f.edges] == edges
    # typed: the request node's wire form is the daemon's, its fields attributes
    req = f.nodes["req:1000:1"]
    assert req.attrs.request is not None and req.attrs.request.op == "rename"
    assert req.attrs.daemon == 1000 and req.attrs.conn == 50
    assert f.cycle is not None and f.cycle.kind == "recursive_locking"
    assert f.cycle.segments[0].wait_at == "afs_linux_lock_inode"
