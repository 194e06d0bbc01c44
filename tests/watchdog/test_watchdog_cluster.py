"""The watchdog sees a cluster: one glock reported by two daemons is one lock of the graph,
and lock order merged across daemons shows an ABBA across nodes without a hang."""

from __future__ import annotations

from stackfs.watchdog import clusterdep, graph
from stackfs.watchdog.daemons import DaemonView


def _glock(key: str, node: str, holders=(), waiters=()) -> dict:
    return {
        "name": "glock",
        "key": key,
        "scope": "dlm:fs",
        "node": node,
        "state": "EX",
        "holders": [
            {
                "task": {"pid": p, "comm": "mmapio"},
                "mode": m,
                "chain": ["gfs2_file_write_iter", "gfs2_glock_nq"],
            }
            for p, m in holders
        ],
        "waiters": [
            {
                "task": {"pid": p, "comm": "mmapio"},
                "mode": m,
                "chain": ["gfs2_fault", "gfs2_glock_nq"],
            }
            for p, m in waiters
        ],
    }


def _view(conn: int, pid: int, locks: list[dict], order: list[tuple[str, str, int]]):
    return DaemonView(
        conn,
        f"/mnt/node{conn}",
        f"stackfs:gfs2:{pid}",
        pid,
        True,
        "python",
        True,
        {
            "locks": locks,
            "inflight": [],
            "lock_order": [
                {"first": a, "then": b, "task": {"pid": t, "comm": "mmapio"}, "chain": []}
                for a, b, t in order
            ],
        },
    )


def test_scoped_lock_is_one_node_with_holders_from_every_daemon():
    v1 = _view(
        1,
        101,
        [
            _glock("fs:2/a", "node1", holders=[(11, "EX")]),
            _glock("fs:2/b", "node1", waiters=[(11, "PR")]),
        ],
        [],
    )
    v2 = _view(2, 102, [_glock("fs:2/b", "node2", holders=[(12, "EX")])], [])
    g = graph.WaitGraph()
    g.daemons = {1: v1, 2: v2}
    lid = graph._lock_node(g, v1, v1.snapshot.locks[1])
    assert lid == graph._lock_node(g, v2, v2.snapshot.locks[0]) == "lock:dlm:fs:glock fs:2/b"
    assert [h.node for h in graph._holders(g, v1.snapshot.locks[1])] == ["node2"]
    assert "node2 EX" in g.nodes[lid].label


def test_merged_lock_order_finds_abba_across_daemons():
    a, b = "glock fs:2/a", "glock fs:2/b"
    views = {1: _view(1, 101, [], [(a, b, 11)]), 2: _view(2, 102, [], [(b, a, 12)])}
    (cycle,) = clusterdep.inversions(views)
    assert {(d.first, d.then, d.daemon) for d in cycle} == {(a, b, 101), (b, a, 102)}
    assert "2 daemons" in clusterdep.render(cycle)
    # the same order on both nodes is no inversion
    same = {1: _view(1, 101, [], [(a, b, 11)]), 2: _view(2, 102, [], [(a, b, 12)])}
    assert clusterdep.inversions(same) == []


def test_a_buffered_read_waiting_for_its_own_readahead_waits_for_the_read():
    """A reader sleeps in ``filemap_get_pages`` on a folio its own readahead READ has locked
    (seen on this kernel: read(2) into a shared mapping, stack below, state D): that wait is
    on the READ carrying its pid, as a page fault's in ``filemap_fault`` is."""
    from stackfs.kernel.snapshot import RequestSnap
    from stackfs.watchdog.procscan import TaskInfo

    stack = [
        "[<0>] folio_wait_bit_common+0x15d/0x360",
        "[<0>] filemap_get_pages+0x75d/0x780",
        "[<0>] filemap_read+0x118/0x3e0",
        "[<0>] vfs_read+0x35a/0x4a0",
        "[<0>] ksys_read+0x77/0x110",
    ]
    reader = TaskInfo(7, 7, "mmapio", "D", stack=stack)
    read = RequestSnap.parse({"id": 6, "op": "read", "task": {"pid": 7, "comm": "mmapio"}})
    assert graph.page_fault_wait(reader, read)
    write = RequestSnap.parse({"id": 7, "op": "write", "task": {"pid": 7, "comm": "mmapio"}})
    assert not graph.page_fault_wait(reader, write)
