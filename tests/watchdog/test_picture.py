"""The wait-for picture: a cycle laid out top to bottom, wrapped labels, at most 1,200 px wide."""

from __future__ import annotations

import re
import shutil

import pytest

from stackfs.watchdog.graph import Cycle, Edge, Node, WaitGraph
from stackfs.watchdog.picture import MAX_WIDTH_IN, png_size, to_dot, wrap, write_picture

LONG = 'openat("/tmp/stackfs-aufs-afs-copyup-rfcxnds2/afs/proj/results.dat")'


def seed000_graph() -> tuple[WaitGraph, Cycle]:
    g = WaitGraph()
    for n in (
        Node("task:1", "task", f"stackfs-worker/1\nS request_wait_answer\n{LONG}"),
        Node("task:2", "task", f"mv/2\nS request_wait_answer\nrenameat2({LONG}, {LONG})"),
        Node("req:9:17", "request", "FUSE open (ino 2196963)\nreq #17, 1.09 s"),
        Node("req:8:8", "request", 'FUSE rename "results.dat" (ino 70302785)'),
        Node("lock:9:i", "lock", "i_rwsem ino:2196963\n/proj/results.dat (ino 2196963)"),
        Node("daemon:9", "daemon", "daemon python/9\nstackfs:afs:9\nalive"),
    ):
        g.add(n)
    cyc = [
        Edge("task:1", "req:9:17", "fuse_wait", "waits for reply (fuse_open)"),
        Edge("req:9:17", "lock:9:i", "lock_wait", "down_write in afs_linux_lock_inode"),
        Edge("lock:9:i", "task:1", "held_by", "held write since inode_lock"),
    ]
    for e in [
        *cyc,
        Edge("req:8:8", "task:1", "served_by", "served by worker thread"),
        Edge("task:2", "req:8:8", "fuse_wait", "waits for reply (fuse_rename2)"),
        Edge("req:9:17", "daemon:9", "context", "in daemon"),
    ]:
        g.link(e)
    cycle = Cycle(
        ["task:1", "req:9:17", "lock:9:i"],
        cyc,
        "recursive_locking",
        "possible recursive locking",
        "",
        [1],
        [],
    )
    return g, cycle


def test_wrap_breaks_paths_between_components():
    lines = wrap(LONG, 34).split("\n")
    assert all(len(ln) <= 34 for ln in lines) and "".join(lines) == LONG
    assert lines[0].endswith("/")


def test_dot_is_top_to_bottom_with_the_cycle_first_and_context_unconstrained():
    g, cycle = seed000_graph()
    dot = to_dot(g, cycle, {1, 2})
    assert "rankdir=TB" in dot and f'size="{MAX_WIDTH_IN:g},40"' in dot
    edges = [ln for ln in dot.splitlines() if " -> " in ln]
    assert [e.split(" [")[0].strip() for e in edges[:3]] == [
        '"task:1" -> "req:9:17"',
        '"req:9:17" -> "lock:9:i"',
        '"lock:9:i" -> "task:1"',
    ]
    assert "constraint=false" in next(e for e in edges if '"daemon:9"' in e)
    labels = re.findall(r'^  "[^"]+" \[label="((?:[^"\\]|\\.)*)"', dot, re.M)
    assert len(labels) == len(g.nodes)
    assert max(len(x.replace('\\"', '"')) for lab in labels for x in lab.split("\\n")) <= 34


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_png_is_readable_at_1200_px(tmp_path):
    g, cycle = seed000_graph()
    files = write_picture(g, cycle, tmp_path, [], {1, 2}, cycle.title)
    assert set(files) == {"dot", "svg", "png"}
    width, height = png_size(files["png"])
    assert width <= 1200 and height >= 300, (width, height)
