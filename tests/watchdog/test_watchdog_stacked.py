"""Across layers: the union's worker thread waits on the lower mount, whose daemon hangs.

Only the union is watched; the chain is followed into the layer below through the worker's tid
(the lower daemon's request task), and recovery aborts both connections.
"""

from __future__ import annotations

import pytest

from stackfs.runtime import lifecycle
from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import Watchdog

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]


def test_chain_through_the_union_into_a_hanging_lower_layer(stack, tmp_path, workload,
                                                             nothing_left):
    low, up, u = tmp_path / "low", tmp_path / "up", tmp_path / "u"
    for p in (low, up, u):
        p.mkdir()
    ml = stack.mount(lifecycle.stackfs_argv("testfs", "hang", str(low)), low)
    mu = stack.mount(lifecycle.stackfs_argv("mount", "-o", f"br={up}=rw:{low}=ro", "-f",
                                            str(u)), u)
    wd = Watchdog([u], threshold=1.0, abort=True)
    stat = workload(["stat", str(u / "hang-low")])
    report = wd.run(timeout=15 * timeout_factor())

    assert report.verdict == "hang" and report.cycle is None, report.text()
    g = report.graph
    [upper_req] = [n for n in g.nodes.values()
                   if n.kind == "request" and n.attrs.conn == mu.conn]
    [lower_req] = [n for n in g.nodes.values()
                   if n.kind == "request" and n.attrs.conn == ml.conn]
    assert g.edge(f"task:{stat.pid}", upper_req.id).kind == "fuse_wait"
    [served] = [e for e in g.out(upper_req.id) if e.kind == "served_by"]
    worker = g.tasks[g.nodes[served.dst].attrs.tid]
    assert worker.pid == mu.pid and worker.conn == ml.conn and worker.fuse_wait
    assert g.edge(served.dst, lower_req.id).kind == "fuse_wait"
    assert lower_req.attrs.request.pid == worker.tid
    assert [e.dst for e in g.out(lower_req.id) if e.kind == "handler"] == [f"daemon:{ml.pid}"]
    assert "not answered by daemon" in report.summary

    rec = report.recovery
    assert rec.ok, rec.render()
    assert sorted(rec.aborted) == sorted([ml.conn, mu.conn])
    assert stat.wait(timeout=5) != 0
    nothing_left(mu, [stat.pid, worker.tid])
    nothing_left(ml, [])
