"""Mount lifecycle: up, down, hung daemons aborted, SIGKILLed runs cleaned up (issue 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from stackfs.runtime import fusectl, lifecycle, mountinfo

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def hangfs_argv(name: str, mp: Path) -> list[str]:
    return lifecycle.stackfs_argv("testfs", name, str(mp))


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def in_fuse_wait(pid: int) -> bool:
    try:
        stack = Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return False
    return "request_wait_answer" in stack or "fuse_" in stack


def test_mount_and_clean_unmount(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = lifecycle.start_daemon(hangfs_argv("hang", mp), mp)
    try:
        entry = mountinfo.find(mp)
        assert entry is not None and entry.is_testbed
        assert entry.fstype == "fuse.stackfs"
        # the run id (conftest's STACKFS_RUN_ID) is the fsname's fourth field
        run = mountinfo.run_label(os.environ["STACKFS_RUN_ID"])
        assert entry.source == f"stackfs:testfs-hang:{m.pid}:{run}"
        assert entry.run_label == run and entry.daemon_pid == m.pid
        assert m.conn == os.minor(os.stat(mp).st_dev)
        assert m.waiting() == 0
        os.mkdir(mp / "d")
        assert os.listdir(mp) == ["d"]
    finally:
        rep = lifecycle.unmount(m)
    assert rep.clean and not rep.aborted and not rep.killed
    assert mountinfo.find(mp) is None
    assert m.proc is not None and m.proc.returncode == 0


def test_mount_through_a_symlinked_mount_point(tmp_path):
    """The kernel mounts on a symlink's target, and mountinfo names the target: the daemon is
    found there (it was "said ready but no mount is there")."""
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to("real")
    m = lifecycle.start_daemon(hangfs_argv("hang", link), link)
    try:
        assert m.mountpoint == tmp_path / "real"
        assert mountinfo.find(tmp_path / "real") is not None
    finally:
        rep = lifecycle.unmount(m)
    assert rep.clean and mountinfo.find(tmp_path / "real") is None


def test_mount_failure_reports_daemon_error(tmp_path):
    with pytest.raises(lifecycle.MountError) as err:
        lifecycle.start_daemon(hangfs_argv("hang", tmp_path / "missing"), tmp_path / "missing")
    assert "missing" in str(err.value)
    assert mountinfo.find(tmp_path / "missing") is None


def test_hanging_daemon_is_aborted_and_everything_recovered(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = lifecycle.start_daemon(hangfs_argv("hang", mp), mp)
    stat = subprocess.Popen(["stat", str(mp / "hang1")], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: m.waiting() == 1 and in_fuse_wait(stat.pid), what="stat to hang")
        time.sleep(0.2)
        assert stat.poll() is None, "stat should be stuck in the kernel"
        t0 = time.monotonic()
        rep = lifecycle.unmount(m, timeout=3.0)
        took = time.monotonic() - t0
    finally:
        if stat.poll() is None:
            lifecycle.unmount(m, timeout=1.0)
    assert rep.aborted and not rep.clean
    assert took < 5.0
    assert stat.wait(timeout=5) != 0, "the stuck stat gets an error once the connection is aborted"
    assert mountinfo.find(mp) is None
    assert not psutil.pid_exists(m.pid) or psutil.Process(m.pid).status() == "zombie"
    assert fusectl.waiting(m.conn) in (None, 0)


def test_stack_goes_down_top_down_even_when_a_layer_hangs(tmp_path, stack):
    bottom_mp = tmp_path / "bottom"
    bottom_mp.mkdir()
    bottom = stack.mount(hangfs_argv("hang", bottom_mp), bottom_mp)
    os.mkdir(bottom_mp / "sub")
    top = stack.mount(hangfs_argv("hang", bottom_mp / "sub"), bottom_mp / "sub")
    stat = subprocess.Popen(["stat", str(bottom_mp / "sub" / "hang")], stderr=subprocess.DEVNULL)
    wait_for(lambda: top.waiting() == 1, what="the top layer to hang")
    reports = stack.close(timeout=2.0)
    assert [r.mountpoint for r in reports] == [str(top.mountpoint), str(bottom.mountpoint)]
    assert stat.wait(timeout=5) != 0
    assert mountinfo.find(bottom_mp) is None and mountinfo.find(bottom_mp / "sub") is None
    for m in (bottom, top):
        assert m.proc.poll() is not None


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from stackfs.runtime import lifecycle
    base = Path(sys.argv[1]); how = sys.argv[2]
    with lifecycle.Stack() as st:
        for name in ("a", "b"):
            (base / name).mkdir()
            st.mount(lifecycle.stackfs_argv("testfs", "hang", str(base / name)), base / name)
        print("up", flush=True)
        if how == "raise":
            raise RuntimeError("boom")
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """
)


def run_script(tmp_path: Path, how: str, run_id: str) -> subprocess.Popen[str]:
    env = dict(os.environ, STACKFS_RUN_ID=run_id)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up", proc.stderr.read() if proc.stderr else ""
    return proc


def our_mounts(tmp_path: Path) -> list[str]:
    return [m.mountpoint for m in mountinfo.mounts() if m.mountpoint.startswith(str(tmp_path))]


@pytest.mark.parametrize("how", ["raise", "sigterm", "sigint"])
def test_stack_recovers_on_exception_and_signals(tmp_path, how):
    proc = run_script(tmp_path, how, f"lifecycle-{how}-{os.getpid()}")
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigint":
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=15)
    assert our_mounts(tmp_path) == []


def test_cleanup_removes_what_a_sigkilled_run_left_and_nothing_else(tmp_path):
    keep_mp = tmp_path / "keep"
    keep_mp.mkdir()
    keep = lifecycle.start_daemon(hangfs_argv("hang", keep_mp), keep_mp)
    try:
        run_id = f"lifecycle-kill-{os.getpid()}"
        proc = run_script(tmp_path, "sigkill", run_id)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        left = our_mounts(tmp_path)
        assert str(tmp_path / "a") in left and str(tmp_path / "b") in left
        out = subprocess.run(
            lifecycle.stackfs_argv("cleanup", "--run-id", run_id),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert our_mounts(tmp_path) == [str(keep_mp)]
        assert keep.daemon_alive()
    finally:
        lifecycle.unmount(keep)


def test_unmount_report_tells_how_each_daemon_ended(tmp_path):
    """The daemon's exit status and signal are in the unmount report: 0 after an unmount,
    EXIT_CONNECTION_ABORTED when its connection was aborted under the live mount, the
    crash's own status when it died in a handler."""
    from stackfs import testfs
    from stackfs.runtime import daemon

    ends = {}
    for name in ("clean", "aborted", "crashed"):
        mp = tmp_path / name
        mp.mkdir()
        m = lifecycle.start_daemon(hangfs_argv("crash", mp), mp)
        if name == "aborted":
            assert lifecycle.abort_if_ours(m)  # our own mount's connection
            wait_for(lambda m=m: not m.daemon_alive(), what="the daemon to exit")
        elif name == "crashed":
            assert subprocess.run(["stat", str(mp / "crash-now")], capture_output=True).returncode
            wait_for(lambda m=m: not m.daemon_alive(), what="the daemon to die")
        ends[name] = lifecycle.unmount(m)
    assert (ends["clean"].exit_status, ends["clean"].exit_signal) == (0, None)
    assert not ends["clean"].gone_before
    assert ends["aborted"].exit_status == daemon.EXIT_CONNECTION_ABORTED
    assert ends["aborted"].gone_before and not ends["aborted"].aborted
    assert ends["crashed"].exit_status == testfs.EXIT_CRASH and ends["crashed"].gone_before
    assert all(mountinfo.find(tmp_path / n) is None for n in ends)
