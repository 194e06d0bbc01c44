"""Pieces of the reproducers that need no mount: evidence checks, the report excerpt,
aggregation, the registry."""

from __future__ import annotations

import pytest

from stackfs.repro import evidence, registry
from stackfs.repro.cli import excerpt
from stackfs.repro.runner import RunResult, disturbed
from stackfs.repro.scenario import COMPLETES, Variant
from stackfs.repro.stats import summarize
from stackfs.repro.workload import ProcResult, errno_in

OOPS_REPORT = {
    "events": [{
        "type": "oops", "summary": "kernel BUG at fs/dcache.c!",
        "tasks": [
            {"pid": 1, "comm": "cat", "chain": ["do_filp_open", "path_openat", "lookup_open",
                                               "nfs_atomic_open", "nfs_lookup",
                                               "d_splice_alias"]},
            {"pid": 2, "comm": "cat", "chain": ["lookup_open", "nfs_atomic_open"]},
        ],
    }],
}
CHAIN = ["path_openat", "lookup_open", "nfs_atomic_open", "nfs_lookup", "d_splice_alias"]


def test_oops_evidence():
    assert evidence.oops(OOPS_REPORT, CHAIN, comms={"cat"}, min_tasks=2) == []
    assert evidence.oops(OOPS_REPORT, CHAIN, comms={"ls"})
    assert evidence.oops(OOPS_REPORT, CHAIN, min_tasks=3)
    assert evidence.oops(OOPS_REPORT, ["nfs_lookup", "nfs_atomic_open"])  # wrong order
    assert evidence.oops({"events": []}, CHAIN) == ["no oops event in the report"]


def test_recursive_lock_and_blocked_task_evidence():
    report = {
        "hangs": [{"task": {"comm": "run from pyfuse"}}],
        "blocked": [{"comm": "mv"}, {"comm": "run from pyfuse"}],
        "cycle": {"kind": "recursive_locking", "summary": "x"},
        "events": [{"type": "recursive_locking", "fsname": "stackfs:afs:9",
                    "tasks": [{"pid": 5, "chain": ["afs_open", "osi_VM_FlushPages"]},
                              {"pid": 5, "chain": ["sys_getxattr", "inode_lock"]}],
                    "detail": {"lock": "i_rwsem ino:7",
                               "chain": ["afs_open", "osi_VM_FlushPages"]}}],
    }
    assert evidence.blocked_task(report, "mv") == []
    assert evidence.blocked_task(report, "cat")
    assert evidence.recursive_lock(report, via="osi_VM_FlushPages", fsname_kind="afs") == []
    assert evidence.recursive_lock(report, via="osi_VM_FlushPages", fsname_kind="nfs")
    assert evidence.recursive_lock({"events": [], "cycle": None}, via="x")


def test_errno_from_coreutils_messages():
    assert errno_in("cat: /x: Stale file handle\n") == 116
    assert errno_in("mv: cannot stat 'a': Transport endpoint is not connected") == 107
    assert errno_in("all fine") is None


def test_excerpt_tells_the_story():
    text = "\n".join([
        "INFO: task mv:12 blocked for more than 1 seconds.",
        "WARNING: possible recursive locking detected",
        "w/13 is trying to acquire lock:",
        " (i_rwsem ino:5), at: afs_linux_lock_inode",
        "",
        "but task is already holding lock:",
        " (i_rwsem ino:5), at: inode_lock",
        "",
        "stack backtrace (model call chain, innermost first):",
        " afs_linux_lock_inode", " osi_VM_FlushPages", "",
        "kernel BUG at fs/dcache.c!",
        "PID: 7 Comm: cat", "RIP: 0010:d_splice_alias", "Call Trace:",
        " nfs_lookup", " nfs_atomic_open", "---[ end trace ]---", "",
        "racing tasks (crash dump, innermost frame first):",
        'PID: 7  COMMAND: "cat"', " #0 d_splice_alias", 'PID: 8  COMMAND: "cat"',
    ])
    out = excerpt(text)
    assert out[0].startswith("INFO: task mv:12")
    assert " (i_rwsem ino:5), at: inode_lock" in out
    assert "model backtrace: afs_linux_lock_inode <- osi_VM_FlushPages" in out
    assert "Call Trace: nfs_lookup <- nfs_atomic_open" in out
    assert "racing tasks: cat/7, cat/8" in out


def test_excerpt_reads_the_kernel_records_of_report_txt():
    """report.txt is kernfmt's records: a task in state S has its own block, lockdep's
    backtrace and the oops's trace come with dump_stack()'s <TASK> markers."""
    text = "\n".join([
        "task mv:12 blocked in an interruptible FUSE wait for 1 seconds (state S: the kernel's "
        "hung-task detector reports state D only)",
        "task:mv              state:S stack:0     pid:12",
        "WARNING: possible recursive locking detected",
        "stack backtrace:", "Call Trace:", " <TASK>", " afs_linux_lock_inode",
        " osi_VM_FlushPages", " </TASK>", "",
        "kernel BUG at fs/dcache.c!",
        "PID: 7 Comm: cat 4.7-rc1 (modelled)", "RIP: 0010:d_splice_alias", "Call Trace:",
        " <TASK>", " nfs_lookup", " nfs_atomic_open", " </TASK>", "---[ end trace ]---",
    ])
    out = excerpt(text)
    assert out[0].startswith("task mv:12 blocked in an interruptible FUSE wait")
    assert "model backtrace: afs_linux_lock_inode <- osi_VM_FlushPages" in out
    assert "PID: 7 Comm: cat 4.7-rc1 (modelled)" in out
    assert "Call Trace: nfs_lookup <- nfs_atomic_open" in out


def _result(observed: str, reproduced: bool, **kw) -> RunResult:
    r = RunResult("s", "000", "default", "buggy", "natural", 1, "deadlock",
                  observed=observed, reproduced=reproduced, matched=True, **kw)
    r.total_seconds = 2.0
    return r


def test_summary_rates():
    rs = [_result("deadlock", True, time_to_verdict=1.0, detection_latency=1.0),
          _result("completes", False), _result("completes", False),
          _result("deadlock", True, time_to_verdict=1.2, detection_latency=1.1)]
    [s] = summarize(rs)
    assert s.rate == 50.0
    assert s.per_minute == pytest.approx(60 * 2 / 8.0)
    assert s.observed_text() in ("deadlock ×2, completes ×2", "completes ×2, deadlock ×2")
    assert s.to_json()["time_to_reproduce"]["median"] == pytest.approx(1.1)


def test_disturbed_runs_are_recognised():
    """Only a daemon that says its connection was aborted under a live mount (exit 75), on a
    mount the run did not abort itself, is evidence; ENOTCONN in a process's stderr is not."""
    p = ProcResult("cat", ["cat", "f"], 1, "cat", 0.0, status=1,
                   stderr="cat: f: Software caused connection abort\n")
    outside = {"mountpoint": "/m", "exit_status": 75, "exit_signal": None}
    crashed = {"mountpoint": "/m", "exit_status": 1, "exit_signal": None}
    killed = {"mountpoint": "/m", "exit_status": None, "exit_signal": "SIGSEGV"}
    assert disturbed(_result("wrong-result", False, verdict="ok", processes=[p],
                             unmounts=[outside]))
    assert not disturbed(_result("wrong-result", False, verdict="ok", processes=[p]))
    for u in (crashed, killed):
        assert not disturbed(_result("wrong-result", False, verdict="ok", processes=[p],
                                     unmounts=[u]))
    # the run aborted that connection itself (recovery after a finding, or its unmount)
    assert not disturbed(_result("wrong-result", False, verdict="ok", unmounts=[outside],
                                 aborted_by_run=["/m"]))
    assert not disturbed(_result("deadlock", True, verdict="deadlock", unmounts=[outside]))
    assert disturbed(_result("setup-error", False, error="cat: x: Transport endpoint is not "
                             "connected", unmounts=[outside]))
    assert not disturbed(_result("setup-error", False,
                                 error="cat: x: Transport endpoint is not connected"))


def test_registry():
    names = [s.name for s in registry.scenarios()]
    assert "aufs-afs-copyup" in names and "nfs-atomic-open" in names
    with pytest.raises(KeyError, match="no scenario"):
        registry.get("nope")
    s = registry.get("aufs-afs-copyup")
    assert s.variant("buggy").is_bug and not s.variant("fixed-afs").is_bug
    with pytest.raises(ValueError):
        Variant("x", "sometimes", "bad expectation")
    assert COMPLETES in {v.expect for v in s.variants}


def test_error_outcome_names():
    from stackfs.repro.scenario import error, error_names

    assert error("ENOENT") == "error:ENOENT"
    assert error("ESTALE", "ENOENT") == "error:ENOENT,ESTALE"
    assert error_names(error("ESTALE", "ENOENT")) == {"ENOENT", "ESTALE"}
    assert error_names(COMPLETES) == frozenset()
    assert Variant("buggy", error("ENOENT"), "x").is_bug
    with pytest.raises(ValueError):
        error("ENOTANERRNO")
    with pytest.raises(ValueError):
        Variant("buggy", "error:EBOGUS", "x")


def _judged(expect: str, stderr: str, status: int) -> RunResult:
    """Judge one finished process through the runner's own _check and _judge."""
    from types import SimpleNamespace

    from stackfs.repro import runner
    from stackfs.repro.observe import Observation
    from stackfs.repro.scenario import FORCED, Scenario

    proc = ProcResult("cat f", ["cat", "f"], 10, "cat", 0.0, 1.0, status, "", stderr)
    v = Variant("v", expect, "x")
    work = SimpleNamespace(results=[proc], poll=lambda: True)
    report = SimpleNamespace(found=False, verdict="ok")
    obs = Observation(None, report, work, None)  # type: ignore[arg-type]
    run = SimpleNamespace(variant=v)
    result = RunResult("s", "000", "default", "v", FORCED, 1, expect, recovered=True)
    seen = runner._check(result, Scenario(), run, obs)
    runner._judge(result, seen, FORCED, obs)
    return result


def test_errno_seen_by_a_real_process_is_the_observed_outcome():
    from stackfs.repro.scenario import error

    enoent = "cat: /a/proj: No such file or directory\n"
    r = _judged(error("ENOENT"), enoent, 1)
    assert (r.observed, r.matched, r.reproduced, r.problems) == ("error:ENOENT", True, True, [])
    # a fixed variant that saw the error: observed says which, and it is a failure
    r = _judged(COMPLETES, enoent, 1)
    assert r.observed == "error:ENOENT" and not r.matched and r.problems
    # another errno than the bug's is not the bug
    r = _judged(error("ENOENT"), "cat: f: Stale file handle\n", 1)
    assert r.observed == "error:ESTALE" and not r.matched
    # the bug's errno did not happen: the process completed
    r = _judged(error("ENOENT"), "", 0)
    assert r.observed == COMPLETES and not r.reproduced and not r.matched


def test_hung_task_threshold_follows_the_machine(monkeypatch):
    """The scenario's threshold times STACKFS_TIMEOUT_FACTOR (a TCG guest: 5); --threshold wins."""
    from stackfs.repro.observe import machine_threshold, machine_timeout

    monkeypatch.delenv("STACKFS_TIMEOUT_FACTOR", raising=False)
    assert machine_threshold(None, 2.5) == 2.5 and machine_timeout(20) == 20
    monkeypatch.setenv("STACKFS_TIMEOUT_FACTOR", "5")
    assert machine_threshold(None, 2.5) == 12.5 and machine_threshold(None) == 5.0
    assert machine_threshold(0.5, 2.5) == 0.5  # explicit: as given
    assert machine_timeout(20) == 100
