"""Findings in the kernel log: written to /dev/kmsg, read back, and found by the expressions
fstests' ``_check_dmesg`` (common/rc) and hung-task checkers use."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from stackfs.runtime import lifecycle
from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import kernfmt, kmsg

#: fstests common/rc _check_dmesg (grep -E), plus the hung-task expression harnesses add
FSTESTS = [
    re.compile(p)
    for p in (
        r"kernel BUG at",
        r"WARNING:",
        r"\bBUG:",
        r"Oops:",
        r"possible recursive locking detected",
        r"Internal error",
        r"(INFO|ERR): suspicious RCU usage",
        r"INFO: possible circular locking dependency detected",
        r"general protection fault:",
        r"BUG .* remaining",
        r"UBSAN:",
    )
]
HUNG = re.compile(r"INFO: task .* blocked for more than [0-9]+ seconds")

needs_kmsg = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(kmsg.KMSG), reason="writing /dev/kmsg needs root"
)


def fstests_hits(lines: list[str]) -> set[str]:
    return {p.pattern for p in FSTESTS for ln in lines if p.search(ln)}


def report(tid: int = 4242) -> dict:
    """A report (JSON form) with one hung task waiting for an i_rwsem that another holds
    (inferred from stacks) and a modelled recursive-locking event."""
    task = {
        "tid": tid,
        "pid": tid,
        "comm": "mv",
        "state": "D",
        "ppid": 1,
        "flags": 0x400000,
        "stack": [
            "[<0>] rwsem_down_write_slowpath+0x1/0x2",
            "[<0>] down_write+0x1/0x2",
            "[<0>] vfs_rename+0x1/0x2",
        ],
    }
    holder = {
        "tid": tid + 1,
        "pid": tid + 1,
        "comm": "cat",
        "state": "S",
        "ppid": 1,
        "stack": ["[<0>] request_wait_answer+0x1/0x2"],
    }
    graph = {
        "nodes": [
            {"id": f"task:{tid}", "kind": "task", "attrs": {"tid": tid, "comm": "mv"}},
            {"id": f"task:{tid + 1}", "kind": "task", "attrs": {"tid": tid + 1, "comm": "cat"}},
            {"id": "klock:7", "kind": "klock", "attrs": {"path": "/u/d", "is_dir": True}},
        ],
        "edges": [
            {
                "src": f"task:{tid}",
                "dst": "klock:7",
                "kind": "lock_wait",
                "attrs": {"mode": "write"},
            },
            {
                "src": "klock:7",
                "dst": f"task:{tid + 1}",
                "kind": "held_by",
                "attrs": {"mode": "read"},
            },
        ],
    }
    event = {
        "type": "recursive_locking",
        "tasks": [{"pid": tid + 2, "comm": "stackfs-worker"}],
        "detail": {
            "lock": "i_rwsem ino:12",
            "mode": "write",
            "held_mode": "write",
            "chain": ["afs_open", "afs_linux_lock_inode"],
            "held_chain": ["inode_lock"],
        },
    }
    return {
        "hangs": [{"task": task, "blocked_for": 3.4}],
        "blocked": [holder],
        "graph": graph,
        "events": [event],
    }


def test_render_is_the_kernels_format_line_for_line():
    recs = kernfmt.render(report(), tainted="Not tainted")
    text = [r.text for r in recs]
    rel, ver = os.uname().release, os.uname().version.split()[0]
    assert text[:2] == [
        "INFO: task mv:4242 blocked for more than 3 seconds.",
        f"      Not tainted {rel} {ver}",
    ]
    # the kernel's line about its own hung_task_timeout_secs knob is not the watchdog's
    assert not [ln for ln in text if "hung_task" in ln]
    assert text[2] == (
        "task:mv              state:D stack:0     pid:4242  tgid:4242  ppid:1"
        "      task_flags:0x400000 flags:0x00000000"
    )
    assert text[3:8] == [
        "Call Trace:",
        " <TASK>",
        " rwsem_down_write_slowpath+0x1/0x2",
        " down_write+0x1/0x2",
        " vfs_rename+0x1/0x2",
    ]
    blocker = text.index(
        "INFO: task mv:4242 <writer> blocked on an rw-semaphore likely owned "
        "by task cat:4243 <reader>"
    )
    assert text[blocker + 1].startswith("task:cat ")  # the holder is not hung: shown
    banner = text.index("WARNING: possible recursive locking detected")
    assert text[banner - 1] == "=" * 44 and text[banner + 1] == f"{rel} {ver} Not tainted"
    assert text[banner + 3] == "stackfs-worker/4244 is trying to acquire lock:"
    assert all(r.model for r in recs[banner:]) and not recs[0].model
    assert kernfmt.print_tainted(1 | 1 << 9) == "Tainted: P        W" + " " * 10


def _fuse_waiter(tid: int = 5151) -> dict:
    """A report (JSON form) whose one blocked task sleeps in state S in a FUSE wait (as a stat
    on an unanswered LOOKUP does on this machine's 6.18: /proc/TID/stat state S,
    request_wait_answer on top of /proc/TID/stack)."""
    task = {
        "tid": tid,
        "pid": tid,
        "comm": "stat",
        "state": "S",
        "ppid": 1,
        "stack": ["[<0>] request_wait_answer+0x195/0x300", "[<0>] fuse_lookup+0xb2/0x1d0"],
    }
    return {"hangs": [{"task": task, "blocked_for": 5.2}], "graph": {"nodes": [], "edges": []}}


def test_task_in_state_s_has_its_own_block_not_the_hung_task_format():
    """The kernel's hung-task detector reports state D only: a task asleep in an
    interruptible FUSE wait is the testbed's finding, in a block of its own."""
    text = [r.text for r in kernfmt.render(_fuse_waiter(), tainted="Not tainted")]
    assert text[0] == (
        "task stat:5151 blocked in an interruptible FUSE wait for 5 seconds "
        "(state S: the kernel's hung-task detector reports state D only)"
    )
    assert text[1].startswith("task:stat            state:S stack:0     pid:5151 ")
    assert text[2:5] == ["Call Trace:", " <TASK>", " request_wait_answer+0x195/0x300"]
    assert not [ln for ln in text if HUNG.search(ln) or "Tainted" in ln or "hung_task" in ln]
    assert not fstests_hits(text)


def test_report_txt_is_kmsg_without_the_tag():
    """report.txt's blocks are kernfmt's records (no tag) plus the testbed's evidence: the
    taint line is the kernel's real one, and a task in state S gets the S block."""
    from stackfs.watchdog.detect import Hang
    from stackfs.watchdog.procscan import TaskInfo
    from stackfs.watchdog.report import Report

    d = TaskInfo(4242, 4242, "mv", "D", 1, "down_write", ["down_write+0x1/0x2"])
    s = TaskInfo(5151, 5151, "stat", "S", 1, "request_wait_answer", ["request_wait_answer+0x1"])
    r = Report("hang", "two tasks", 0.0, 1.0, hangs=[Hang(d, 0.0, 3.5, "observed"),
                                                     Hang(s, 0.0, 5.2, "observed")])
    text = r.text().splitlines()
    kmsg_text = [x.text for x in kernfmt.render(r.to_json())]  # what --kmsg writes
    i = text.index("INFO: task mv:4242 blocked for more than 3 seconds.")
    assert text[i : i + 7] == kmsg_text[:7]  # the same records, taint included
    assert text[i + 1] == f"      {kernfmt.print_tainted()} {os.uname().release} " + (
        os.uname().version.split()[0]
    )
    assert text[i + 6] == " </TASK>"
    assert text[i + 7].startswith(" blocked for 3.50 s")  # then the testbed's evidence
    j = text.index(
        "task stat:5151 blocked in an interruptible FUSE wait for 5 seconds "
        "(state S: the kernel's hung-task detector reports state D only)"
    )
    assert text[j + 1].startswith("task:stat            state:S")
    assert not [ln for ln in text if "hung_task" in ln or "INFO: task stat" in ln]


def test_modelled_oops_names_the_release_its_model_stands_for(tmp_path):
    """Seed 003's NFS model is Linux 4.7-rc1: its BUG block keeps that release's lines and
    frames (no 6.x ``Oops:`` prefix, no ``<TASK>``) and says which release it is."""
    import trio

    from backends.nfs import NFSFS
    from stackfs.kernel.snapshot import EventSnap
    from stackfs.kernel.task import Task, calls, running_as
    from stackfs.watchdog.detect import ModelEvent
    from stackfs.watchdog.report import render_event

    fs = NFSFS(tmp_path, "buggy")
    assert fs.kernel.events.release == "4.7-rc1"

    async def main() -> None:
        dc = fs.kernel.dcache("nfs")
        with running_as(Task(4242, "ls")), calls(
            "entry_SYSCALL_64_fastpath", "sys_open", "do_sys_open", "nfs_atomic_open", "nfs_lookup"
        ):
            d = dc.d_alloc(1, "f")
            dc.d_add(d, 5)
            try:
                dc.d_splice_alias(6, d)
            except Exception:  # noqa: BLE001 - the model's Oops
                pass

    trio.run(main)
    [ev] = fs.kernel.events.of_type("oops")
    assert ev["release"] == "4.7-rc1"
    text = [r.text for r in kernfmt.render({"events": [ev]}, tainted="Not tainted")]
    assert "PID: 4242 Comm: ls 4.7-rc1 (modelled)" in text
    assert text[text.index("Call Trace:") + 1 :][:3] == [" nfs_lookup", " nfs_atomic_open",
                                                         " do_sys_open"]
    assert " sys_open" in text and " entry_SYSCALL_64_fastpath" in text
    assert not [ln for ln in text if "<TASK>" in ln or ln.startswith("Oops:")]
    assert not [ln for ln in text if os.uname().release in ln]
    assert {r"kernel BUG at"} <= fstests_hits(text)
    dump = render_event(ModelEvent(1, "/m", "stackfs:nfs:1", EventSnap.parse(ev)))
    assert "PID: 4242 Comm: ls 4.7-rc1 (modelled)" in dump
    assert "racing tasks (crash dump of the modelled 4.7-rc1 kernel, innermost frame first):" \
        in dump


@needs_kmsg
def test_kmsg_round_trip_is_found_by_fstests_expressions():
    with kmsg.Reader() as reader:
        n = kmsg.write_report(report(os.getpid() * 10))
        back = [r for r in reader.read() if f"[{os.getpid()}]: " in r.text]
    assert len(back) == n > 30  # more than one devkmsg ratelimit burst: nothing dropped
    assert all(r.facility == kmsg.LOG_USER for r in back)
    lines = [r.text for r in back]
    assert lines[0] == (
        f"stackfs[{os.getpid()}]: INFO: task mv:{os.getpid() * 10} blocked for more than 3 seconds."
    )
    assert any(HUNG.search(ln) for ln in lines)
    assert {r"WARNING:", r"possible recursive locking detected"} <= fstests_hits(lines)
    assert any(
        ln.startswith(f"stackfs-model[{os.getpid()}]: WARNING: possible recursive") for ln in lines
    )


@needs_kmsg
@pytest.mark.mount
@pytest.mark.timeout(120)
def test_repro_run_kmsg_puts_fuse_waits_and_lockdep_in_dmesg(tmp_path):
    with kmsg.Reader() as reader:
        res = subprocess.run(
            lifecycle.stackfs_argv(
                "repro",
                "run",
                "aufs-afs-copyup",
                "--variant",
                "buggy",
                "--case",
                "mv",
                "--kmsg",
                "--report-dir",
                str(tmp_path / "r"),
            ),
            capture_output=True,
            text=True,
            timeout=110 * timeout_factor(),
        )
        assert res.returncode == 0, res.stdout + res.stderr
        lines = [r.text for r in reader.read() if r.text.startswith("stackfs")]
    # mv and the union's worker sleep in request_wait_answer's interruptible wait (state S,
    # as /proc shows them): their own blocks, never the kernel's hung-task line
    assert any(
        re.search(r": task mv:[0-9]+ blocked in an interruptible FUSE wait for", ln)
        for ln in lines
    ), lines[:5]
    assert not [ln for ln in lines if HUNG.search(ln)]
    assert {r"WARNING:", r"possible recursive locking detected"} <= fstests_hits(lines)
    assert any(
        "<writer> waits, through its FUSE request, on an rw-semaphore likely owned by task "
        "stackfs-worker:" in ln
        for ln in lines
    )


@needs_kmsg
@pytest.mark.mount
@pytest.mark.timeout(40)
def test_watch_kmsg_writes_the_interruptible_fuse_wait_block(testfs, workload):
    m = testfs("hang")
    with kmsg.Reader() as reader:
        w = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackfs",
                "watch",
                str(m.mountpoint),
                "--threshold",
                "1",
                "--abort",
                "--kmsg",
                "--no-picture",
                "--count",
                "1",
                "--timeout",
                "20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "watching 1 FUSE mount" in w.stderr.readline()
            stat = workload(["stat", str(m.mountpoint / "hang-kmsg")])
            w.communicate(timeout=25 * timeout_factor())
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        lines = [r.text for r in reader.read() if r.text.startswith(f"stackfs[{w.pid}]: ")]
    head = f"stackfs[{w.pid}]: "
    # the real kernel keeps a task waiting for an unanswered LOOKUP in state S
    # (request_wait_answer's interruptible wait): its own block, not the hung-task format
    assert re.fullmatch(
        re.escape(f"{head}task stat:{stat.pid} blocked in an interruptible FUSE wait for ")
        + r"[0-9]+ seconds \(state S: the kernel's hung-task detector reports state D only\)",
        lines[0],
    ), lines[:3]
    assert lines[1].startswith(f"{head}task:stat            state:S ")
    assert f"{head} request_wait_answer" in " ".join(lines)
    assert not [ln for ln in lines if HUNG.search(ln) or "hung_task" in ln]


def test_lock_inversion_is_lockdeps_circular_banner():
    from stackfs.kernel.lockdep import unsafe_scenario

    dep = {
        "first": "A",
        "then": "B",
        "task": {"pid": 7, "comm": "t1"},
        "chain": ["f", "lock_b"],
        "first_chain": ["lock_a"],
        "first_mode": "write",
        "then_mode": "write",
    }
    new = {
        "first": "B",
        "then": "A",
        "task": {"pid": 8, "comm": "t2"},
        "chain": ["g", "lock_a"],
        "first_chain": ["lock_b"],
        "first_mode": "write",
        "then_mode": "read",
    }
    ev = {
        "type": "lock_inversion",
        "tasks": [{"pid": 8, "comm": "t2"}],
        "detail": {"new": new, "existing": [dep], "scenario": unsafe_scenario("A", "B", "B")},
    }
    text = [r.text for r in kernfmt.render({"events": [ev]}, tainted="Not tainted")]
    i = text.index("WARNING: possible circular locking dependency detected")
    assert text[i - 1] == "=" * 54 and text[i + 2] == "-" * 54
    assert text[i + 3 : i + 8] == [
        "t2/8 is trying to acquire lock:",
        "(A){++++}-{4:4}, at: lock_a",
        "",
        "but task is already holding lock:",
        "(B){+.+.}-{4:4}, at: lock_b",
    ]
    assert "-> #0 (B){+.+.}-{4:4}:" in text and "       lock_b" in text
    assert text.count(" *** DEADLOCK ***") == 1
    assert {r"WARNING:"} <= fstests_hits(text)
