"""The verdict of one look (``stackfs.watchdog.monitor._verdict``): a task whose request the
testbed itself holds at an injection point (a forcing barrier still gathering its round) is
instrumentation, not a hung task, however long a slow machine keeps it there; a task hung
anywhere else is still a hang."""

from __future__ import annotations

from stackfs.watchdog.detect import Hang
from stackfs.watchdog.graph import Edge, Node, WaitGraph
from stackfs.watchdog.monitor import _verdict
from stackfs.watchdog.procscan import TaskInfo


def _hang(tid: int) -> Hang:
    task = TaskInfo(tid=tid, pid=tid, comm="cat", state="S", wchan="request_wait_answer")
    return Hang(task=task, since=0.0, blocked_for=6.0, how="sched")


def _graph() -> WaitGraph:
    """cat/1 and cat/2 wait for their opens: the first is held at nfs_atomic_open's barrier
    (two of three arrived), the second is not answered by a daemon that is alive."""
    g = WaitGraph()
    for n in (
        Node("task:1", "task", "cat/1"),
        Node("task:2", "task", "cat/2"),
        Node("req:9:1", "request", "FUSE open"),
        Node("req:9:2", "request", "FUSE lookup"),
        Node("inject:9:nfs_atomic_open", "inject", "injection point"),
        Node("daemon:9", "daemon", "daemon python/9"),
    ):
        g.add(n)
    for e in (
        Edge("task:1", "req:9:1", "fuse_wait", "waits for reply (fuse_open)"),
        Edge("req:9:1", "inject:9:nfs_atomic_open", "barrier", "held at"),
        Edge("req:9:1", "daemon:9", "context", "in daemon"),
        Edge("task:2", "req:9:2", "fuse_wait", "waits for reply (fuse_lookup)"),
        Edge("req:9:2", "daemon:9", "handler", "not answered by"),
    ):
        g.link(e)
    return g


def test_a_task_held_at_a_forcing_barrier_is_not_hung() -> None:
    verdict, summary = _verdict([_hang(1)], None, [], [], _graph(), 5.0)
    assert verdict == "ok"
    assert "held at an injection point" in summary


def test_a_task_hung_elsewhere_is_still_a_hang() -> None:
    verdict, summary = _verdict([_hang(1), _hang(2)], None, [], [], _graph(), 5.0)
    assert verdict == "hang"
    assert summary.startswith("1 task blocked for more than 5 s") and "cat/2" in summary
