"""``stackfs watch`` on a mount that it did not start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stackfs.runtime.service import timeout_factor

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]


def _watch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stackfs", "watch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_watching(w: subprocess.Popen) -> None:
    line = w.stderr.readline()
    assert "watching 1 FUSE mount" in line, line


def test_watch_reports_and_recovers_a_hang(testfs, workload, tmp_path, nothing_left,
                                           picture_ok):
    m = testfs("hang")
    out = tmp_path / "rep"
    w = _watch(str(m.mountpoint), "--threshold", "0.5", "--abort", "--report-dir", str(out),
               "--json", str(tmp_path / "r.json"), "--timeout", "20")
    try:
        _wait_watching(w)
        stat = workload(["stat", str(m.mountpoint / "hang-cli")])
        stdout, stderr = w.communicate(timeout=25 * timeout_factor())
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 1, stderr
    # stat waits in state S (request_wait_answer): the S block, not the hung-task format
    assert f"task stat:{stat.pid} blocked in an interruptible FUSE wait for " in stdout
    assert f"INFO: task stat:{stat.pid}" not in stdout
    assert 'lookup "hang-cli"' in stdout and "not answered by daemon" in stdout
    assert "recovery: complete" in stdout
    assert "no watched mount is left" in stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["verdict"] == "hang" and data["recovery"]["ok"]
    assert data["hangs"][0]["task"]["tid"] == stat.pid
    picture_ok(data["files"])
    assert stat.wait(timeout=5) != 0
    nothing_left(m, [stat.pid])


def test_watch_all_mounts_reports_without_abort(testfs, workload, tmp_path):
    """No MOUNTPOINT: every FUSE mount is watched; without --abort the mount stays."""
    m = testfs("lookup-mkdir")
    w = subprocess.Popen([sys.executable, "-m", "stackfs", "watch", "--timeout", "20",
                          "--no-picture"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        # the watcher has started once it says it watches our mount (the watchdog is built,
        # its mounts found, before that line)
        line = w.stderr.readline()
        while line and not line.startswith("stackfs watch: watching"):
            line = w.stderr.readline()
        assert f"{m.mountpoint}" in line, line
        stat = workload(["stat", str(m.mountpoint / "trigger")])
        # other FUSE mounts of the machine may hang too: read until our report is complete
        mine = False
        for line in w.stdout:
            lines.append(line)
            mine = mine or f"task stat:{stat.pid} blocked in an interruptible FUSE wait" in line
            if mine and "*** DEADLOCK ***" in line:
                break
    finally:
        w.kill()
        w.wait()
    stdout = "".join(lines)
    assert f"task stat:{stat.pid} blocked in an interruptible FUSE wait for " in stdout, stdout
    assert "*** DEADLOCK ***" in stdout
    assert m.is_mounted()  # not aborted


def test_watch_once_and_bad_mountpoint(testfs, tmp_path):
    m = testfs("hang")
    res = subprocess.run([sys.executable, "-m", "stackfs", "watch", "--once", str(m.mountpoint)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stackfs watchdog: ok" in res.stdout
    res = subprocess.run([sys.executable, "-m", "stackfs", "watch", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "not a FUSE mount point" in res.stderr


def _fdinfo_names_fuse_connection(pid: int) -> bool:
    """Whether the kernel shows ``fuse_connection:`` in the fdinfo of ``pid``'s /dev/fuse fd."""
    import os

    fds = [fd for fd in os.listdir(f"/proc/{pid}/fd")
           if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"]
    assert fds, f"pid {pid} holds no /dev/fuse"
    with open(f"/proc/{pid}/fdinfo/{fds[0]}") as f:
        return "fuse_connection:" in f.read()


def test_watch_a_foreign_fuse_filesystem(workload, tmp_path):
    """Not a testbed mount: the connection comes from the syscall's path, the daemon from the
    process holding /dev/fuse for that connection (fdinfo), and --abort still recovers."""
    from pathlib import Path

    from stackfs.runtime import fusectl, mountinfo

    mp = tmp_path / "foreign"
    mp.mkdir()
    daemon = subprocess.Popen([sys.executable, str(Path(__file__).with_name("foreignfs.py")),
                               str(mp)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert daemon.stdout.readline() == b"ready\n"
        entry = mountinfo.find(mp)
        assert entry is not None and entry.fstype == "fuse.foreign" and not entry.is_testbed
        # Every wait below ends on what it waits for (the verdict, an exit); only the test's
        # pytest-timeout bounds them, which STACKFS_TIMEOUT_FACTOR scales on a slow machine.
        w = _watch(str(mp), "--threshold", "0.5", "--abort", "--json", str(tmp_path / "f.json"),
                   "--no-picture", "--timeout", "600")
        try:
            _wait_watching(w)
            stat = workload(["stat", str(mp / "hang-foreign")])
            stdout, stderr = w.communicate()
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        assert w.returncode == 1, stderr
        data = json.loads((tmp_path / "f.json").read_text())
        assert data["verdict"] == "hang"
        [hang] = data["hangs"]
        assert hang["task"]["tid"] == stat.pid and hang["task"]["conn"] == entry.conn
        assert hang["task"]["conn_how"] == "syscall path"
        # The daemon is the process whose /dev/fuse fd names the connection in its fdinfo, which
        # only newer kernels do (6.18 here; Debian 12's 6.1 does not): there it stays unknown.
        known = _fdinfo_names_fuse_connection(daemon.pid)
        assert hang["daemon"]["pid"] == (daemon.pid if known else None)
        assert not hang["daemon"]["testbed"]
        assert f"FUSE connection {entry.conn} at {mp} (foreignfs)" in stdout
        assert data["recovery"]["ok"] and data["recovery"]["aborted"] == [entry.conn]
        assert data["recovery"]["foreign_daemons"] == ([daemon.pid] if known else [])
        assert stat.wait() != 0
        assert mountinfo.find(mp) is None
    finally:
        entry = mountinfo.find(mp)
        if entry is not None and entry.fstype == "fuse.foreign":
            fusectl.abort(entry.conn)
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)
        daemon.kill()
        daemon.wait()
