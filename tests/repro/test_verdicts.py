"""Every verdict earned (issue 10): natural mode's rate, the workload's locale and errno, the
evidence's fields. No mounts (the crash-and-retry test is in test_scenarios.py)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from stackfs.repro import evidence
from stackfs.repro.cli import _status
from stackfs.repro.runner import RunResult
from stackfs.repro.scenario import Proc
from stackfs.repro.stats import summarize
from stackfs.repro.workload import Workload, errno_in


def _natural(variant: str, expected: str, observed: str, matched: bool = True) -> RunResult:
    r = RunResult(
        "s",
        "000",
        "default",
        variant,
        "natural",
        1,
        expected,
        observed=observed,
        matched=matched,
        reproduced=expected != "completes" and observed == expected,
    )
    r.total_seconds = 1.0
    r.recovered = True
    return r


def test_natural_buggy_variant_that_never_reproduced_fails() -> None:
    runs = [_natural("buggy", "deadlock", "completes") for _ in range(3)]
    [s] = summarize(runs)
    assert s.rate == 0.0 and s.all_matched  # each run is fine on its own...
    assert s.failure is not None and "never reproduced in 3 natural runs" in s.failure
    assert _status(runs, [s]) == 1  # ...but the variant shows nothing: exit non-zero


def test_natural_buggy_variant_that_reproduced_once_passes() -> None:
    runs = [_natural("buggy", "deadlock", "completes"), _natural("buggy", "deadlock", "deadlock")]
    [s] = summarize(runs)
    assert s.rate == 50.0 and s.failure is None
    assert _status(runs, [s]) == 0


def test_natural_fixed_variant_that_reproduced_fails() -> None:
    runs = [
        _natural("fixed", "completes", "completes"),
        _natural("fixed", "completes", "deadlock", matched=False),
    ]
    [s] = summarize(runs)
    assert s.failure == "1 of 2 runs did not complete correctly: deadlock ×1"
    assert _status(runs, [s]) == 1


def test_workload_runs_in_the_c_locale(tmp_path: Path) -> None:
    w = Workload(tmp_path)
    script = 'echo "$LC_ALL/${LANG-unset}/${LANGUAGE-unset}"; ls /nonexistent-i10'
    w.start(
        [Proc(["sh", "-c", script], ok_status=None)],
        env={
            "PATH": "/usr/bin:/bin",
            "LANG": "de_DE.UTF-8",
            "LANGUAGE": "de",
            "LC_ALL": "de_DE.UTF-8",
        },
    )
    assert w.wait(10)
    [r] = w.results
    assert r.stdout.strip() == "C/unset/unset"
    assert r.stderr.rstrip().endswith("No such file or directory")
    assert r.errno == errno.ENOENT


def test_errno_read_from_the_number_where_the_message_has_it() -> None:
    text = (
        "Traceback (most recent call last):\n  ...\nPermissionError: [Errno 13] Permission "
        "denied: '/x'\n"
    )
    assert errno_in(text) == errno.EACCES
    assert errno_in("cat: f: Stale file handle\n") == errno.ESTALE
    assert (
        errno_in("mv: cannot move 'a' to 'b': Transport endpoint is not connected")
        == errno.ENOTCONN
    )


def _recursive_report() -> dict:
    """The shape of a real report of seed 001 (aufs-afs-copyup, buggy, mv)."""
    chain = [
        "do_sys_open",
        "vfs_open",
        "afs_linux_open",
        "afs_open",
        "osi_FlushPages",
        "osi_VM_FlushPages",
        "afs_linux_lock_inode",
    ]
    lock = "lock:9:i_rwsem ino:7"
    return {
        "daemons": {"41": {"pid": 9, "fsname": "stackfs:afs:9"}},
        "cycle": {
            "kind": "recursive_locking",
            "segments": [{"waiter": 12, "holder": 12, "lock": lock}],
            "edges": [
                {"src": "task:12", "dst": "req:9:1", "kind": "fuse_wait"},
                {"src": "req:9:1", "dst": lock, "kind": "lock_wait", "attrs": {"chain": chain}},
                {
                    "src": lock,
                    "dst": "task:12",
                    "kind": "held_by",
                    "attrs": {"chain": ["sys_getxattr", "inode_lock"]},
                },
            ],
        },
        "events": [
            {
                "type": "recursive_locking",
                "fsname": "stackfs:afs:9",
                "tasks": [
                    {"pid": 12, "chain": chain},
                    {"pid": 12, "chain": ["sys_getxattr", "inode_lock"]},
                ],
                "detail": {"lock": "i_rwsem ino:7", "chain": chain},
            }
        ],
    }


def test_recursive_lock_evidence_reads_the_fields() -> None:
    report = _recursive_report()
    assert (
        evidence.recursive_lock(report, via="osi_VM_FlushPages", fsname_kind="afs", lock="i_rwsem")
        == []
    )
    assert evidence.recursive_lock(report, lock="glock")  # another lock class
    assert evidence.recursive_lock(report, fsname_kind="nfs")  # another daemon
    # the event alone, or the cycle alone, is enough
    only_cycle = dict(report, events=[])
    assert evidence.recursive_lock(only_cycle, via="osi_VM_FlushPages", lock="i_rwsem") == []
    only_event = dict(report, cycle=None)
    assert evidence.recursive_lock(only_event, via="osi_VM_FlushPages", lock="i_rwsem") == []


def test_a_word_elsewhere_in_the_report_is_not_evidence() -> None:
    report = _recursive_report()
    # the call site appears in the summary, a note and the holder's chain, not in the waiter's
    report["summary"] = report["notes"] = "osi_VM_FlushPages"
    report["events"][0]["detail"]["chain"] = ["do_sys_open", "afs_open"]
    report["events"][0]["tasks"][1]["chain"] = ["osi_VM_FlushPages"]
    report["cycle"]["edges"][1]["attrs"]["chain"] = ["do_sys_open", "afs_open"]
    assert "osi_VM_FlushPages" in json.dumps(report)
    assert evidence.recursive_lock(report, via="osi_VM_FlushPages")
    # a lock held by another task is not a recursive lock
    report = _recursive_report()
    report["events"][0]["tasks"][1]["pid"] = 13
    report["cycle"]["segments"][0]["holder"] = 13
    assert evidence.recursive_lock(report)


def test_repro_run_natural_exits_non_zero_when_the_bug_never_reproduced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stackfs repro run X --variant buggy --natural --iterations 3`` with 0 reproductions:
    the rate, the reason, exit 1 (the runs themselves are stood in for: no mounts here)."""
    from stackfs import cli
    from stackfs.repro import cli as repro_cli
    from stackfs.repro.scenario import Scenario

    def never(p: Any, root: Path, progress: Any = None, **kw: Any) -> list[RunResult]:
        out = []
        for i in range(1, p.iterations + 1):
            r = _natural(p.variants[0], "deadlock", "completes")
            r.scenario, r.case, r.iteration = p.scenario.name, p.cases[0], i
            if progress is not None:
                progress(i, p.total, r)
            out.append(r)
        return out

    monkeypatch.setattr(repro_cli, "run_plan", never)
    monkeypatch.setattr(Scenario, "unsupported", classmethod(lambda cls: None))
    status = cli.main(
        [
            "--ascii",
            "repro",
            "run",
            "aufs-afs-copyup",
            "--variant",
            "buggy",
            "--case",
            "mv",
            "--natural",
            "--iterations",
            "3",
            "--report-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert status == 1, out
    assert "0/100" in out
    assert "never reproduced in 3 natural runs" in out
    assert "3 runs: 0 reproduced the bug (deadlock), 3 completed, 0 other" in out
    assert "a natural batch did NOT match its variant's expectation" in out
