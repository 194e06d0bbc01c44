"""autofs4's wait queue is a model (a completion held by the automount daemon's task): the
report says so where it lists a daemon's modelled locks, as it does for the modelled locks and
GFS2's glocks, and the wait-for picture's node says ``(model, FSNAME)`` (issue 23 item 2)."""

from __future__ import annotations

from types import SimpleNamespace

from stackfs.watchdog import graph
from stackfs.watchdog.daemons import DaemonView
from stackfs.watchdog.report import render_daemons

STATE = {
    "inflight": [],
    "locks": [],
    "completions": [
        {
            "id": 1,
            "name": "autofs_wait_queue",
            "key": "proj",
            "desc": "mount request #1 for 'proj', answered by the automount daemon",
            "holder": {"pid": 77, "comm": "automountd"},
            "waiters": [{"task": {"pid": 9, "comm": "mkdir"}, "chain": ["autofs4_wait"]}],
            "done": False,
            "status": 0,
        }
    ],
}


def _view() -> DaemonView:
    return DaemonView(
        42, "/m/autofs", "stackfs:autofs:5", 5, True, "autofs", True, state=STATE, how="fsname"
    )


def test_report_lists_the_wait_queue_as_modelled():
    r = SimpleNamespace(daemons={42: _view()}, waiting={42: 1})
    lines = render_daemons(r)  # type: ignore[arg-type]
    i = lines.index("  1 modelled wait queue (completions held by a task):")
    assert lines[i + 1].startswith("   autofs_wait_queue proj mount request #1")
    assert "to be completed by automountd/77, waited for by [mkdir/9]" in lines[i + 1]


def test_picture_node_of_the_wait_queue_says_model():
    g = graph.WaitGraph()
    view = _view()
    graph._completion_edges(
        g, view, view.snapshot.completions[0], "req:1", ["autofs4_wait"], lambda pid: None
    )
    node = g.nodes["completion:5:1"]
    assert node.kind == "completion" and "(model, stackfs:autofs:5)" in node.label
