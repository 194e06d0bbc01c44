"""Slow is not hung (issue 21): a task blocked on a FUSE request that the daemon is serving,
with progress, is reported as slow and never aborted; a worker that makes no progress over the
threshold stays a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from stackfs.runtime import lifecycle
from stackfs.watchdog import kernfmt, progress

# 6-20 s of copy-up from disk on the 2-core test machine; 1 GiB took only 0.8 s when the copy
# met a warm cache after other mount tests (seen in the full suite), under the 1 s threshold
SIZE = 2 << 30
CHUNK = 8 << 20


def _big_file(path) -> None:
    """SIZE bytes of data (no holes: a copy-up copies every byte), then out of the page cache
    so the copy-up reads it from disk."""
    buf = bytes(CHUNK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(SIZE // CHUNK):
            os.write(fd, buf)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.mount
@pytest.mark.timeout(180)
def test_slow_copy_up_survives_watch_abort(stack, tmp_path):
    """``echo x >> big`` on the union copies 2 GiB up inside the WRITE (a real copy in the
    daemon's worker thread); ``stackfs watch --abort --threshold 1`` reports it as slow, does
    not abort, and the append completes with the right size."""
    low, up, u, rep = (tmp_path / n for n in ("low", "up", "u", "rep"))
    for p in (low, up, u):
        p.mkdir()
    _big_file(low / "big")
    m = stack.mount(lifecycle.stackfs_argv("mount", "-o", f"br={up}=rw:{low}=ro", "-f", str(u)), u)
    w = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stackfs",
            "watch",
            str(u),
            "--threshold",
            "1",
            "--abort",
            "--report-dir",
            str(rep),
            "--json",
            str(tmp_path / "r.json"),
            "--no-picture",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "watching 1 FUSE mount" in w.stderr.readline()
        t0 = time.monotonic()
        append = subprocess.run(
            ["sh", "-c", 'echo x >> "$1"', "sh", str(u / "big")],
            capture_output=True,
            text=True,
            timeout=150,
        )
        took = time.monotonic() - t0
        still_watching = w.poll() is None
    finally:
        w.terminate()
        stdout, stderr = w.communicate(timeout=30)
    try:
        assert append.returncode == 0, append.stderr
        assert still_watching, stderr
        assert m.is_mounted()  # not aborted
        assert os.stat(up / "big").st_size == SIZE + 2
        with open(up / "big", "rb") as f:
            f.seek(SIZE)
            assert f.read() == b"x\n"
        report = rep / "report.json"
        assert report.exists(), f"no report (append {took:.2f} s): {stdout!r} {stderr!r}"
        data = json.loads((rep / "report.json").read_text())
        assert data["verdict"] == "slow", data["summary"]
        assert data["recovery"] is None and data["hangs"] == []
        [slow] = data["slow"]
        assert slow["task"]["comm"] == "sh" and slow["request"]["op"] == "write"
        ev = slow["progress"]
        assert ev["verdict"] == "progress" and ev["worker"] == slow["request"]["worker"]["tid"]
        assert ev["cpu"] > 0 or ev["written"] > 0
        # no hung-task message for it, in the text or in the kernel log's form
        assert not [r for r in kernfmt.render(data) if "blocked for more than" in r.text]
        text = (rep / "report.txt").read_text()
        assert "slow, not hung" in text and "INFO: task" not in text
        assert "the daemon has not read the request" not in text
        assert "slow, not hung" in stdout and "recovery" not in stdout
    finally:
        for p in (low / "big", up / "big"):
            if p.exists():
                p.unlink()


class _Script:
    """``progress.sample`` replaced by scripted counters: (time, cpu_ns, wchar)."""

    def __init__(self, monkeypatch) -> None:
        self.now = 100.0
        self.cpu = self.wchar = 0
        monkeypatch.setattr(progress, "sample", self.sample)

    def sample(self, pid: int, tid: int) -> progress.Sample:
        return progress.Sample(self.now, self.cpu, 0, self.wchar, 0, self.wchar)


def test_progress_verdicts(monkeypatch):
    s = _Script(monkeypatch)
    t = progress.ProgressTracker(threshold=1.0)
    assert t.judge(1, 7, 9).verdict == "unknown"  # one sample: nothing to compare
    s.now += 0.5
    s.cpu, s.wchar = 200_000_000, 50 << 20
    ev = t.judge(1, 7, 9)
    assert ev.verdict == "progress" and ev.written == 50 << 20 and ev.window == 0.5
    assert "52 MB written" in ev.render() and "0.20 s of CPU" in ev.render()
    s.now += 0.5
    assert t.judge(1, 7, 9).verdict == "progress"  # moved within the last threshold
    s.now += 0.3
    assert t.judge(1, 7, 9).verdict == "progress"  # its last move is under a threshold old
    s.now += 0.4
    ev = t.judge(1, 7, 9)
    assert ev.verdict == "stalled" and ev.window >= 1.0  # idle for a whole threshold: hung
    assert "no CPU time and no I/O" in ev.render()
    # a new request (or another worker) starts its own history; idle for less than a
    # threshold is not decided yet
    assert t.judge(1, 8, 9).verdict == "unknown"
    s.now += 0.5
    assert t.judge(1, 8, 9).verdict == "unknown"
    s.now += 0.6
    assert t.judge(1, 8, 9).verdict == "stalled"


def test_recovery_leaves_slow_work_alone():
    """A report with a hang on one connection and slow work on another: recovery aborts the
    hang's connection only (``Report.involved_conns``)."""
    from stackfs.kernel.snapshot import RequestSnap
    from stackfs.watchdog.detect import Hang
    from stackfs.watchdog.graph import Edge, Node, WaitGraph
    from stackfs.watchdog.graphattrs import NodeAttrs
    from stackfs.watchdog.procscan import TaskInfo
    from stackfs.watchdog.report import Report

    slow_t = TaskInfo(1, 1, "sh", "S", wchan="request_wait_answer", conn=10)
    worker = TaskInfo(2, 50, "stackfs-worker", "R")
    hung_t = TaskInfo(3, 3, "stat", "S", wchan="request_wait_answer", conn=11)
    g = WaitGraph()
    for t in (slow_t, worker, hung_t):
        g.tasks[t.tid] = t
        g.add(Node(f"task:{t.tid}", "task", t.comm, NodeAttrs(tid=t.tid)))
    req = RequestSnap.parse({"id": 6})
    g.add(Node("req:50:6", "request", "write", NodeAttrs(daemon=50, conn=10, request=req)))
    g.add(Node("conn:11", "conn", "conn 11", NodeAttrs(conn=11)))
    g.link(Edge("task:1", "req:50:6", "fuse_wait", "waits for reply"))
    g.link(Edge("req:50:6", "task:2", "served_by", "served by worker thread"))
    g.link(Edge("task:3", "conn:11", "fuse_wait", "waits for reply"))
    ev = progress.Evidence("progress", 2, 50, 6, window=1.0, cpu=0.5, written=1 << 20)
    report = Report(
        "hang",
        "",
        0.0,
        1.0,
        hangs=[Hang(hung_t, 0.0, 2.0, "sched")],
        slow=[Hang(slow_t, 0.0, 2.0, "sched", progress=ev)],
        blocked=[slow_t, worker, hung_t],
        graph=g,
    )
    assert report.involved_conns() == [11]
    assert 1 not in report.involved_tids() and 2 not in report.involved_tids()
    assert 3 in report.involved_tids()
    report.slow = []  # were it not slow, its connection would be aborted too
    assert report.involved_conns() == [10, 11]
