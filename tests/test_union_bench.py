"""Smoke test of bench/union_bench.py: its quick mode, one repetition, for stackfs and (where the
kernel has it) the kernel's overlayfs. It checks that the benchmark mounts, measures every
measure, sees the right counts and sizes through the kernel's overlayfs, and leaves no mount.
A `stackfs mount` that does not even answer `--help` fails the test: stackfs is never dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackfs.runtime import mountinfo
from stackfs.runtime.service import timeout_factor

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "union_bench.py"


def _has_overlay() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "overlay" for line in f if line.strip())


def _check_stackfs_mount() -> None:
    """``stackfs mount --help`` answers: the peer under test is there (a failure is the test's)."""
    p = subprocess.run(
        [sys.executable, "-m", "stackfs", "mount", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, f"`stackfs mount --help` failed ({p.returncode}): {p.stderr}"


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_runs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmark mounts and drops caches: needs root")
    _check_stackfs_mount()
    peers = ["overlayfs", "stackfs"] if _has_overlay() else ["stackfs"]
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(BENCH), "--quick", "--reps", "1", "--inner", "1", "--no-setup"]
    argv += ["--only", ",".join(peers), "--json", str(out), "--dir", str(tmp_path)]
    argv += ["--timeout", "120"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=280 * timeout_factor())
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    keys = [m["key"] for m in doc["measures"]]
    for peer in peers:
        missing = [k for k in keys if not doc["median_ns"][peer][k]]
        assert not missing, f"{peer}: no sample for {missing}: {doc['problems'].get(peer)}"
    if "overlayfs" in peers:
        assert not doc["problems"].get("overlayfs"), doc["problems"]
    assert "readdir merged 1000 (3 branches), cold" in p.stdout
    left = [m.mountpoint for m in mountinfo.mounts() if m.mountpoint.startswith(str(tmp_path))]
    assert not left, f"the benchmark left mounts behind: {left}"
    assert not any(tmp_path.glob("union-bench-*")), "the scratch directory was not removed"
