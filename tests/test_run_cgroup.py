"""Issue 24 item 1: a run's daemons and workload live in a cgroup (v2) of its own; its
processes are found and reaped through it, also after the runner was SIGKILLed; its mounts
carry its run id in the fsname. Issue 24 item 3: cleanup touches only what the caller owns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stackfs.linux.proc import alive
from stackfs.repro.scenario import Proc
from stackfs.repro.workload import Workload
from stackfs.runtime import cgroup, lifecycle, mountinfo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

if cgroup.unavailable() is not None:
    pytestmark.append(pytest.mark.skip(reason=f"no run cgroups here: {cgroup.unavailable()}"))


def hang_argv(mp: Path) -> list[str]:
    return lifecycle.stackfs_argv("testfs", "hang", str(mp))


def wait_for(cond, timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def in_fuse_wait(pid: int) -> bool:
    try:
        return "request_wait_answer" in Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return False


def test_a_stacks_processes_are_found_and_reaped_through_its_cgroup(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    run_id = f"cg-stack-{os.getpid()}"
    with lifecycle.Stack(run_id=run_id) as st:
        m = st.mount(hang_argv(mp), mp)
        cg = st.cgroup
        assert cg is not None and cg.path.parent == cgroup.run_path(run_id)
        work = Workload(tmp_path / "work")
        # a process hung in a FUSE lookup, and one whose child outlives it (a grandchild the
        # runner never started: only the cgroup knows it)
        work.start(
            [
                Proc(["stat", str(mp / "hang-here")]),
                Proc(["sh", "-c", f"sleep 1000 & echo $! > {tmp_path}/grandchild; wait"]),
            ],
            cgroup=cg,
        )
        wait_for(lambda: (tmp_path / "grandchild").exists(), what="the grandchild")
        grandchild = int((tmp_path / "grandchild").read_text())
        stat_pid = work.results[0].pid
        wait_for(lambda: in_fuse_wait(stat_pid), what="stat to wait on the daemon")
        found = cg.pids()
        assert {m.pid, stat_pid, work.results[1].pid, grandchild} <= found
        assert cgroup.of_pid(m.pid) == "/" + str(cg.path.relative_to(cgroup.hierarchy()))
        entry = mountinfo.find(mp)
        assert entry is not None and entry.run_label == run_id and entry.daemon_pid == m.pid
    # the stack went down: the hung connection aborted, then cgroup.kill, then rmdir
    assert grandchild in st.cgroup_killed
    for pid in found:
        wait_for(lambda pid=pid: not alive(pid), what=f"{pid} to be reaped")
    assert not cg.path.exists()
    work.reap(grace=0.1)


RUNNER = """
import os, sys, time
from pathlib import Path
from stackfs.runtime import lifecycle
from stackfs.repro.scenario import Proc
from stackfs.repro.workload import Workload

tmp = Path(sys.argv[1])
st = lifecycle.Stack(run_id=sys.argv[2]).__enter__()
mp = tmp / "mnt"
mp.mkdir()
m = st.mount(lifecycle.stackfs_argv("testfs", "hang", str(mp)), mp)
work = Workload(tmp / "work")
work.start([Proc(["stat", str(mp / "hang-x")]), Proc(["sleep", "1000"])], cgroup=st.cgroup)
print(m.pid, *[r.pid for r in work.results], flush=True)
time.sleep(1000)
"""


def test_a_sigkilled_runners_processes_are_reaped_through_its_cgroup(tmp_path):
    run_id = f"cg-killed-{os.getpid()}"
    other = tmp_path / "other"
    other.mkdir()
    other_mp = other / "mnt"
    other_mp.mkdir()
    with lifecycle.Stack(run_id=f"cg-other-{os.getpid()}") as keep:
        kept = keep.mount(hang_argv(other_mp), other_mp)
        runner = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RUNNER), str(tmp_path), run_id],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert runner.stdout is not None
            pids = [int(p) for p in runner.stdout.readline().split()]
            assert len(pids) == 3, pids
            wait_for(lambda: in_fuse_wait(pids[1]), what="stat to wait on the daemon")
            runner.send_signal(signal.SIGKILL)
            assert runner.wait(timeout=10) == -signal.SIGKILL
            path = cgroup.run_path(run_id)
            assert path is not None and set(pids) <= cgroup.pids_under(path)
            dry = subprocess.run(
                lifecycle.stackfs_argv("cleanup", "--run", run_id, "--dry-run"),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert dry.returncode == 0, dry.stderr
            assert f"would unmount: {tmp_path}/mnt (daemon {pids[0]}; run {run_id})" in dry.stdout
            assert str(other_mp) not in dry.stdout and all(alive(p) for p in pids)
            out = subprocess.run(
                lifecycle.stackfs_argv("cleanup", "--run-id", run_id),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert f"aborted and detached: {tmp_path}/mnt" in out.stdout, out.stdout
            # what the unmount did not end (stat got ECONNABORTED from the abort) cgroup.kill did
            killed = [ln for ln in out.stdout.splitlines() if " of cgroup: " in ln]
            assert len(killed) == 1 and str(pids[2]) in killed[0], out.stdout
            for pid in pids:
                wait_for(lambda pid=pid: not alive(pid), what=f"{pid} to be reaped")
            assert not path.exists()
            assert mountinfo.find(tmp_path / "mnt") is None
            # another run's mount, daemon and cgroup are untouched
            assert kept.is_mounted() and kept.daemon_alive()
            assert keep.cgroup is not None and kept.pid in keep.cgroup.pids()
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()


def test_cleanup_without_a_run_removes_only_mounts_whose_daemon_is_gone(tmp_path):
    live_mp, dead_mp = tmp_path / "live", tmp_path / "dead"
    live_mp.mkdir()
    dead_mp.mkdir()
    with lifecycle.Stack(run_id=f"cg-foreign-{os.getpid()}") as st:
        live = st.mount(hang_argv(live_mp), live_mp)
        dead = st.mount(hang_argv(dead_mp), dead_mp)
        os.kill(dead.pid, signal.SIGKILL)
        wait_for(lambda: not dead.daemon_alive(), what="the daemon to die")
        # a runner cleaning up after its own run leaves another run's dead mount alone
        acts = lifecycle.cleanup(run_id=f"cg-another-{os.getpid()}")
        assert not [a for a in acts if a.mountpoint in (str(dead_mp), str(live_mp))], acts
        # on a shared machine another `stackfs cleanup` may take the dead mount first (any
        # cleanup may: its daemon is gone); what no cleanup without --all may take is the live one
        dry = subprocess.run(
            lifecycle.stackfs_argv("cleanup", "--dry-run"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        line = f"{dead_mp} (daemon {dead.pid}; daemon gone)"
        assert f"would unmount: {line}" in dry.stdout or mountinfo.find(dead_mp) is None
        assert str(live_mp) not in dry.stdout, dry.stdout
        listed = subprocess.run(
            lifecycle.stackfs_argv("cleanup", "--all", "--dry-run"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"would unmount: {live_mp} (daemon {live.pid}; --all)" in listed.stdout
        out = subprocess.run(
            lifecycle.stackfs_argv("cleanup"), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert str(live_mp) not in out.stdout, out.stdout
        assert mountinfo.find(dead_mp) is None
        assert live.is_mounted() and live.daemon_alive()
