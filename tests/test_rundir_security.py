"""The run directory is root's, and cleanup signals only a proven daemon (issue 21, item 2).

Every attack runs as ``nobody`` (``setpriv --reuid=65534``) against real daemons on real FUSE
mounts; the run root is a temporary ``STACKFS_RUN_DIR`` under a directory ``nobody`` can reach,
and the default ``/run/stackfs`` is made in a mount namespace of its own over a fresh ``/run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackfs.linux import proc
from stackfs.runtime import daemonid, lifecycle, mountinfo, rundir

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(script: str) -> subprocess.CompletedProcess[str]:
    """Run a Python ``script`` as nobody (prints what it managed to do)."""
    return subprocess.run(
        [*NOBODY, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def passthrough_argv(base: Path, name: str) -> list[str]:
    store, mp = base / f"{name}-store", base / f"{name}-mnt"
    store.mkdir()
    mp.mkdir()
    return lifecycle.stackfs_argv(
        "backend", "mount", "passthrough", "--store", str(store), "-f", str(mp)
    )


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory nobody can reach (0755, in /tmp); ``STACKFS_RUN_DIR`` is ``BASE/run``."""
    d = Path(tempfile.mkdtemp(prefix="stackfs-rundir-", dir="/tmp"))
    d.chmod(0o755)
    monkeypatch.setenv("STACKFS_RUN_DIR", str(d / "run"))
    try:
        yield d
    finally:
        with contextlib.suppress(rundir.RunDirError):  # nobody's root: nothing of ours in it
            lifecycle.cleanup(run_id=os.environ["STACKFS_RUN_ID"])
        for e in mountinfo.testbed_mounts():
            if e.mountpoint.startswith(str(d) + "/"):
                lifecycle.lazy_detach(e.mountpoint)
        shutil.rmtree(d, ignore_errors=True)


def start_ticks(pid: int) -> int:
    """``starttime`` of ``/proc/PID/stat``, which anyone can read."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def mode_owner(p: Path) -> tuple[str, int]:
    st = os.lstat(p)
    return f"{stat.S_IMODE(st.st_mode):04o}", st.st_uid


def test_run_root_is_root_0755_with_0700_daemon_dirs_under_umask_0(base, stack):
    """A backend daemon runs with umask(0) (FUSE hands it modes already masked): its run
    directory's modes are still its own."""
    m = stack.mount(passthrough_argv(base, "a"), base / "a-mnt")
    run = base / "run"
    assert mode_owner(run) == ("0755", 0)
    assert mode_owner(run / str(m.pid)) == ("0700", 0)
    assert mode_owner(run / str(m.pid) / "info.json") == ("0600", 0)
    assert mode_owner(run / str(m.pid) / "control.sock") == ("0600", 0)
    assert not (run / str(m.pid) / "info.json.tmp").exists()
    info = rundir.read_info(m.pid)
    assert info is not None and info["start_ticks"] == proc.start_ticks(m.pid)


def test_default_run_root_is_made_root_0755_under_umask_0():
    """``/run/stackfs`` itself (no STACKFS_RUN_DIR), made by the same code under umask 0, in a
    mount namespace whose /run is a fresh tmpfs (the machine's /run is not touched)."""
    script = textwrap.dedent(
        """
        import os, stat
        os.umask(0)
        os.environ.pop("STACKFS_RUN_DIR", None)
        from stackfs.runtime import rundir
        assert str(rundir.root()) == "/run/stackfs"
        d = rundir.write_info(os.getpid(), {"pid": os.getpid()})
        for p in ("/run/stackfs", str(d), str(d / "info.json")):
            st = os.lstat(p)
            print(p, oct(stat.S_IMODE(st.st_mode)), st.st_uid)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "STACKFS_RUN_DIR"}
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs -o mode=0755 stackfs-test-run /run && exec "$0" -c "$1"',
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines()]
    assert lines[0] == ["/run/stackfs", "0o755", "0"]
    assert lines[1][1:] == ["0o700", "0"] and lines[2][1:] == ["0o600", "0"]


def test_nobody_cannot_plant_rename_or_remove_anything_in_the_run_directory(base, stack):
    m = stack.mount(passthrough_argv(base, "a"), base / "a-mnt")
    run = base / "run"
    out = as_nobody(
        f"""
        import os
        for what, fn in [
            ("mkdir", lambda: os.mkdir("{run}/999999")),
            ("rename", lambda: os.rename("{run}/{m.pid}", "{run}/hidden")),
            ("rmdir", lambda: os.rmdir("{run}/{m.pid}")),
            ("create", lambda: open("{run}/{m.pid}/info.json.tmp", "w")),
        ]:
            try:
                fn()
                print(what, "done")
            except OSError as exc:
                print(what, exc.errno)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mkdir", "13", "rename", "13", "rmdir", "13", "create", "13"]
    assert rundir.read_info(m.pid) is not None
    assert m.pid in rundir.all_infos()


def _gated_daemon(base: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A daemon whose pid is known before it starts: ``sh`` waits for BASE/go, then execs it."""
    argv = passthrough_argv(base, name)
    gate = base / "go"
    p = subprocess.Popen(
        ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.01; done; exec "$@"', str(gate), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return p, gate


def _mounted_or_exited(p: subprocess.Popen[bytes], mp: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        e = mountinfo.find(mp)
        if e is not None and e.daemon_pid == p.pid:
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("the daemon neither mounted nor exited")


@pytest.mark.parametrize("made_by", ["stackfs", "older-stackfs", "nobody"])
def test_symlink_planted_at_info_json_tmp_does_not_make_root_overwrite_a_file(base, made_by):
    """nobody pre-creates ``RUN/<future pid>/`` with ``info.json.tmp`` a symlink to a root-owned
    0600 file. The run root was made by this code (then nobody cannot plant at all), by an older
    stackfs (root's, 0777: the daemon puts it back to 0755 and refuses nobody's directory), or
    by nobody in a sticky directory (refused as a whole)."""
    secret = base / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    run = base / "run"
    if made_by == "stackfs":  # as a daemon makes it: under umask(0)
        old = os.umask(0)
        try:
            rundir.write_info(os.getpid(), {"pid": os.getpid()})
        finally:
            os.umask(old)
        rundir.remove(os.getpid())
    elif made_by == "older-stackfs":
        run.mkdir()
        run.chmod(0o777)
    else:
        base.chmod(0o1777)  # like /tmp
        made = as_nobody(f"import os; os.mkdir('{run}'); os.chmod('{run}', 0o777)")
        assert made.returncode == 0, made.stderr
    p, gate = _gated_daemon(base, "a")
    try:
        planted = as_nobody(
            f"""
            import os
            os.mkdir("{run}/{p.pid}", 0o777)
            os.symlink("{secret}", "{run}/{p.pid}/info.json.tmp")
            """
        )
        gate.touch()
        mounted = _mounted_or_exited(p, base / "a-mnt")
    finally:
        gate.touch()
        e = mountinfo.find(base / "a-mnt")
        if e is not None and e.daemon_pid == p.pid:
            lifecycle.unmount(
                lifecycle.Mount(base / "a-mnt", p.pid, e.conn, e.source, "p", None, p)
            )
        elif p.poll() is None:
            p.kill()
        out = p.communicate(timeout=10)[0].decode()
    assert secret.read_text() == "root's secret\n"
    assert mode_owner(secret) == ("0600", 0)
    assert (planted.returncode == 0) == (made_by != "stackfs"), planted.stderr
    assert mounted == (made_by == "stackfs"), out
    if not mounted:
        assert p.returncode == 1
        (line,) = out.strip().splitlines()
        assert "refusing to use it" in line and "65534" in line
    if made_by != "nobody":
        assert mode_owner(run) == ("0755", 0)


@pytest.mark.parametrize("case", ["symlink", "parent-writable"])
def test_a_run_root_others_could_swap_is_refused(base, case):
    """nobody plants the root as a symbolic link (to a directory of root's) in a sticky
    directory, or the root's parent is writable by others without the sticky bit: a daemon
    refuses it with one line, and writes nothing anywhere."""
    run, target = base / "run", base / "target"
    target.mkdir(mode=0o755)
    if case == "symlink":
        base.chmod(0o1777)
        made = as_nobody(f"import os; os.symlink('{target}', '{run}')")
        assert made.returncode == 0, made.stderr
    else:
        base.chmod(0o777)
    with pytest.raises(rundir.RunDirError) as err:
        rundir.write_info(os.getpid(), {"pid": os.getpid()})
    assert "refusing to use it" in str(err.value) and "\n" not in str(err.value)
    assert ("symbolic link" if case == "symlink" else f"parent {base}") in str(err.value)
    assert list(target.iterdir()) == []
    assert case == "symlink" or not run.exists()
    assert rundir.all_infos() == {} and rundir.read_info(os.getpid()) is None


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated root process (``sleep 1000``) that no cleanup may kill."""
    p = subprocess.Popen(["sleep", "1000"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def cleanup_spares(
    victim: subprocess.Popen[bytes], run_id: str
) -> subprocess.CompletedProcess[str]:
    """``stackfs cleanup --run-id RUN_ID``, then the victim is observed alive: it has not exited
    within a second of the command's end (a SIGKILL sent by cleanup is delivered before cleanup
    exits; the victim is then reaped in far less than that, even on a loaded machine)."""
    out = subprocess.run(
        lifecycle.stackfs_argv("cleanup", "--run-id", run_id),
        capture_output=True,
        text=True,
        timeout=30,
    )
    with pytest.raises(subprocess.TimeoutExpired):
        victim.wait(timeout=1.0)
    return out


def test_fake_info_json_planted_by_nobody_does_not_get_a_process_killed(base, stack, victim):
    stack.mount(passthrough_argv(base, "a"), base / "a-mnt")  # the run root, as daemons make it
    run, run_id = base / "run", "fake-by-nobody"
    fake = {"pid": victim.pid, "kind": "dlm", "mountpoint": None, "run_id": run_id}
    planted = as_nobody(
        f"""
        import os
        os.mkdir("{run}/{victim.pid}")
        open("{run}/{victim.pid}/info.json", "w").write({json.dumps(json.dumps(fake))})
        """
    )
    out = cleanup_spares(victim, run_id)
    assert planted.returncode != 0 and "PermissionError" in planted.stderr
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", ["service", "mount"])
def test_a_trusted_file_alone_does_not_get_a_process_killed(base, stack, victim, kind):
    """Even a root-owned info.json naming an unrelated process, with everything about it that
    anyone can read (its start time, its command line, a live mount's connection), gets it
    reported, not killed: it holds neither the control socket nor the FUSE connection."""
    m = stack.mount(passthrough_argv(base, "a"), base / "a-mnt")
    run_id = f"fake-{kind}"
    fake = {
        "pid": victim.pid,
        "kind": "dlm" if kind == "service" else "passthrough",
        "mountpoint": None if kind == "service" else "/nowhere",
        "conn": None if kind == "service" else m.conn,
        "run_id": run_id,
        "started": time.time() + 1e6,
        "start_ticks": start_ticks(victim.pid),
        "cmdline": ["sleep", "1000"],
    }
    d = base / "run" / str(victim.pid)
    d.mkdir(mode=0o700)
    (d / "info.json").write_text(json.dumps(fake))
    (d / "info.json").chmod(0o600)
    assert rundir.read_info(victim.pid) == fake  # trusted: root's, in root's directory
    out = cleanup_spares(victim, run_id)
    assert out.returncode == 1
    (line,) = out.stdout.strip().splitlines()
    assert "not killed" in line and f"daemon {victim.pid}" in line
    assert ("control.sock" if kind == "service" else "no /dev/fuse") in line
    assert m.daemon_alive() and m.is_mounted()


def test_a_daemon_proves_itself_also_where_fdinfo_names_no_connection(
    base, stack, victim, monkeypatch
):
    """Debian 12's 6.1 prints no ``fuse_connection:`` in /dev/fuse's fdinfo (modelled here by
    dropping the number from what was read): the daemon is then proven by holding /dev/fuse,
    its start time, command line and control socket; a process holding no /dev/fuse is not."""
    m = stack.mount(passthrough_argv(base, "a"), base / "a-mnt")
    real = proc.fuse_connections
    monkeypatch.setattr(proc, "fuse_connections", lambda pid: [None for _ in real(pid)])
    info = rundir.read_info(m.pid)
    assert info is not None
    assert daemonid.of_mount(m.pid, m.conn, info).ok
    assert not daemonid.of_mount(m.pid, m.conn, {**info, "cmdline": ["sleep", "1000"]}).ok
    fake = {**info, "start_ticks": proc.start_ticks(victim.pid), "cmdline": ["sleep", "1000"]}
    assert daemonid.of_mount(victim.pid, m.conn, fake).why == "it holds no /dev/fuse"
    monkeypatch.setattr(proc, "fuse_connections", real)
    assert daemonid.of_mount(m.pid, m.conn, None).why == f"its /dev/fuse serves connection {m.conn}"
    assert not daemonid.of_mount(m.pid, m.conn + 1000, None).ok


def test_state_as_nobody_is_one_clear_error(base, stack):
    m = stack.mount(passthrough_argv(base, "a"), base / "a-mnt")
    out = subprocess.run(
        [*NOBODY, *lifecycle.stackfs_argv("state", str(m.mountpoint))],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": "/"},
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert "permission denied" in line and "root" in line


def test_cleanup_sweeps_the_directory_of_a_daemon_that_died_while_starting(base):
    """A daemon killed between making ``PID/`` and writing ``info.json`` leaves an empty
    directory no run can claim: any cleanup (a run's too) removes it; a live process's is kept
    (it may be a daemon still starting)."""
    top = rundir.check_root(create=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.mkdir(top / str(dead.pid), 0o700)
    os.mkdir(top / str(os.getpid()), 0o700)
    lifecycle.cleanup(run_id="someone-elses-run")
    assert not (top / str(dead.pid)).exists()
    assert (top / str(os.getpid())).is_dir()
    rundir.remove(os.getpid())


def test_a_non_root_caller_trusts_roots_run_directory(base):
    """The in-process test tier runs as nobody and calls ``lifecycle.cleanup(run_id=...)``:
    a run root of root's is trusted (root is no attacker), and nothing of root's is touched."""
    top = rundir.check_root(create=True)
    rundir.write_info(os.getpid(), {"pid": os.getpid(), "run_id": "roots"})
    try:
        r = as_nobody(f"""
            import os
            os.environ["STACKFS_RUN_DIR"] = {str(top)!r}
            from stackfs.runtime import lifecycle, rundir
            print(lifecycle.cleanup(run_id="nobodys"), sorted(rundir.all_infos()))
        """)
        assert r.returncode == 0, r.stderr
        # no error, nothing done, and root's 0700 daemon directories stay unreadable to nobody
        assert r.stdout.split() == ["[]", "[]"]
        assert rundir.read_info(os.getpid()) is not None  # still there
    finally:
        rundir.remove(os.getpid())
