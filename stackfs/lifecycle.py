"""Mount lifecycle: start a daemon, know its mount, and get rid of it whatever happened to it.

:func:`start_daemon` starts a filesystem daemon as its own process and returns only once the
mount is live (or raises :class:`MountError` with the daemon's own error output).
:func:`unmount` tries a clean ``umount`` first; when the mount is hung it aborts the FUSE
connection through the control filesystem, detaches the mount point lazily (``umount -l``) and
reaps the daemon. :class:`Stack` brings a stack of mounts up bottom-up and down top-down, always:
when a layer is deadlocked, when the caller raises, on Ctrl-C and on SIGTERM. :func:`cleanup`
removes what a run killed with SIGKILL left behind, and only testbed mounts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from stackfs import daemonid, fusectl, mountinfo, rundir
from stackfs.linux import libc
from stackfs.linux.proc import alive, terminate
from stackfs.service import Service, spawn_ready, timeout_factor
from stackfs.service import start as start_service


class MountError(Exception):
    """A daemon could not be mounted; the message carries its own error output."""


@dataclass
class Mount:
    """A live testbed mount and the daemon serving it."""

    mountpoint: Path
    pid: int
    conn: int
    fsname: str
    kind: str
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def waiting(self) -> int | None:
        """Requests in flight on the FUSE connection (``None`` once it is gone)."""
        return fusectl.waiting(self.conn)

    def is_mounted(self) -> bool:
        e = mountinfo.find(self.mountpoint)
        return e is not None and e.daemon_pid == self.pid

    def daemon_alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return alive(self.pid)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            return ""

    def control(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Ask the daemon over its control socket (works while the mount is wedged)."""
        from stackfs import control

        return control.query_pid(self.pid, request, timeout)


@dataclass
class UnmountReport:
    """How a mount went down, and how its daemon ended.

    ``aborted``/``detached``/``killed`` say what *this* unmount did. ``exit_status`` (the
    daemon's exit status) and ``exit_signal`` (the signal that ended it, e.g. ``SIGSEGV``) are
    known for a daemon this process started and reaped (None otherwise); ``gone_before``: the
    daemon had already exited when the unmount began (it did not end because of us).
    """

    mountpoint: str
    clean: bool
    aborted: bool
    detached: bool
    killed: bool
    seconds: float
    pid: int | None = None
    exit_status: int | None = None
    exit_signal: str | None = None
    gone_before: bool = False

    def daemon_end(self) -> str:
        """How the daemon ended, in words (for the run's notes)."""
        if self.exit_signal is not None:
            how = f"killed by {self.exit_signal}" + (" (by us)" if self.killed else "")
        elif self.exit_status is not None:
            how = f"exit {self.exit_status}"
        else:
            how = "exit status unknown"
        return how + (", before the unmount" if self.gone_before else "")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def stackfs_argv(*args: str) -> list[str]:
    """The command line that runs ``stackfs ARGS`` with this interpreter."""
    return [sys.executable, "-m", "stackfs", *args]


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def start_daemon(
    argv: Sequence[str],
    mountpoint: str | os.PathLike[str],
    *,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    detach: bool = False,
) -> Mount:
    """Start ``argv`` (a daemon that runs :func:`stackfs.daemon.serve` in the foreground) and
    return once ``mountpoint`` is live.

    The daemon reports readiness on a pipe (``STACKFS_READY_FD``); its stdout and stderr go to
    ``log`` (a temporary file by default). ``detach`` starts it in a session of its own and does
    not keep it as a child to reap (what ``stackfs mount`` without ``-f`` does).
    ``timeout`` is multiplied by ``$STACKFS_TIMEOUT_FACTOR`` (a slow machine: a VM under software
    emulation starts a Python daemon several times slower; the wait still ends on "ready").
    """
    # resolved as the kernel resolves it when the daemon mounts there: a symlinked mount point
    # shows up in mountinfo under its target (nothing is mounted there yet to walk into)
    mp = Path(os.path.realpath(mountpoint))
    proc, log, msg = spawn_ready(argv, "stackfs-daemon-", env=env, log=log, timeout=timeout)
    timeout *= timeout_factor()
    if not msg.startswith(b"ready"):
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        status = proc.poll()
        text = _tail(log.read_text(errors="replace")) if log.exists() else ""
        entry = mountinfo.find(mp)
        orphan = Mount(mp, proc.pid, entry.conn if entry else 0, "", "?", log, proc)
        if entry is not None and entry.daemon_pid == proc.pid or status is None:
            unmount(orphan, timeout=2.0)
        why = (
            f"exited with status {status}"
            if status is not None
            else f"did not mount within {timeout:.0f} s"
        )
        raise MountError(f"mounting {mp} failed: daemon {why}" + (f":\n{text}" if text else ""))
    entry = mountinfo.find(mp)
    if entry is None or entry.daemon_pid != proc.pid:
        unmount(Mount(mp, proc.pid, 0, "", "?", log, proc), timeout=2.0)
        raise MountError(f"mounting {mp} failed: daemon said ready but no mount is there")
    m = Mount(mp, proc.pid, entry.conn, entry.source, entry.kind or "?", log, proc)
    if detach:
        m.proc = None
        proc.returncode = 0  # the daemon outlives us; do not let Popen.__del__ complain
    return m


def adopt(mountpoint: str | os.PathLike[str]) -> Mount:
    """A :class:`Mount` for a testbed mount that someone else started."""
    mp = Path(os.path.abspath(mountpoint))
    entry = mountinfo.find(mp)
    if entry is None or entry.daemon_pid is None:
        raise MountError(f"{mp}: not a stackfs testbed mount")
    return Mount(mp, entry.daemon_pid, entry.conn, entry.source, entry.kind or "?")


def _umount(mp: Path, *flags: str, timeout: float) -> bool:
    """Run umount(8) without canonicalising the path (which could walk into a hung mount)."""
    try:
        res = subprocess.run(
            ["umount", "--no-canonicalize", *flags, str(mp)],
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def lazy_detach(mountpoint: str | os.PathLike[str], timeout: float = 5.0) -> bool:
    """``umount2(MNT_DETACH)``, ``umount -l`` as the fallback: the mount point is free at once,
    the filesystem goes when its last user does. Never walks into the mount."""
    with contextlib.suppress(OSError):
        libc.umount2(os.fsencode(os.fspath(mountpoint)), libc.MNT_DETACH)
        return True
    return _umount(Path(mountpoint), "-l", timeout=timeout)


def _mounted_by(mp: Path, pid: int) -> bool:
    return any(e.mountpoint == str(mp) and e.daemon_pid == pid for e in mountinfo.mounts())


def _reap(m: Mount, timeout: float, grace: float = 1.0) -> bool:
    """Wait for the daemon to exit; SIGTERM, then SIGKILL. Returns whether it had to be killed."""
    deadline = time.monotonic() + timeout
    while m.daemon_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = terminate(m.pid, m.daemon_alive, grace) is not None
    if m.proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.proc.wait(timeout=1.0)
    return killed


def abort_if_ours(m: Mount) -> bool:
    """Abort ``m``'s FUSE connection, but only while mountinfo still shows that mount on that
    connection: connection numbers are reused within milliseconds once a mount goes away."""
    if not m.conn:
        return False
    entry = mountinfo.find(m.mountpoint)
    if entry is None or entry.conn != m.conn or (m.pid and entry.daemon_pid != m.pid):
        return False
    return fusectl.abort(m.conn)


def unmount(m: Mount, timeout: float = 5.0, grace: float = 1.0) -> UnmountReport:
    """Take ``m`` down: clean umount if possible, else abort the connection and detach.

    ``grace`` is how long a daemon gets to exit after an abort before SIGTERM (and as long
    again before SIGKILL).
    """
    t0 = time.monotonic()
    mp = m.mountpoint
    clean = aborted = detached = False
    gone_before = not m.daemon_alive()
    if _mounted_by(mp, m.pid):
        # A hung request keeps the mount busy, so umount fails (EBUSY) rather than hangs.
        # --recursive: mounts on top of the layer's directories go first (an automounter's
        # bind mounts on its map's mount points, seed 001)
        clean = _umount(mp, "--recursive", timeout=min(timeout, 2.0))
        if not clean:
            aborted = abort_if_ours(m)
            detached = lazy_detach(mp, timeout=timeout)
    killed = _reap(m, timeout=timeout if clean else grace, grace=grace)
    status, sig = _exit_of(m)
    return UnmountReport(
        str(mp),
        clean,
        aborted,
        detached,
        killed,
        time.monotonic() - t0,
        m.pid,
        status,
        sig,
        gone_before,
    )


def _exit_of(m: Mount) -> tuple[int | None, str | None]:
    """(exit status, name of the signal that ended it) of a reaped daemon we started."""
    code = m.proc.returncode if m.proc is not None else None
    if code is None:
        return None, None
    if code < 0:
        try:
            return None, signal.Signals(-code).name
        except ValueError:
            return None, f"signal {-code}"
    return code, None


class Stack:
    """Mounts brought up bottom-up and taken down top-down, always.

    Use as a context manager. While it is open, SIGTERM raises :class:`SystemExit` (SIGINT
    raises KeyboardInterrupt as usual) so the ``with`` block unwinds and every mount goes down,
    also when a layer is deadlocked. ``STACKFS_RUN_ID`` is set for the daemons it starts.
    """

    def __init__(self, run_id: str | None = None, log_dir: Path | None = None) -> None:
        self.mounts: list[Mount] = []
        self.reports: list[UnmountReport] = []
        #: service daemons (no mount: a lock manager, an automounter), stopped after the mounts
        self.services: list[Service] = []
        self.run_id = run_id or rundir.run_id() or f"run-{os.getpid()}-{int(time.time())}"
        self.log_dir = log_dir
        self._old_handler: Any = None

    def mount(self, argv: Sequence[str], mountpoint: str | os.PathLike[str], **kw: Any) -> Mount:
        env = dict(os.environ)
        env["STACKFS_RUN_ID"] = self.run_id
        if self.log_dir is not None and "log" not in kw:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            kw["log"] = self.log_dir / f"{len(self.mounts)}-{Path(mountpoint).name}.log"
        m = start_daemon(argv, mountpoint, env=env, **kw)
        self.mounts.append(m)
        return m

    def service(self, argv: Sequence[str], kind: str, **kw: Any) -> Service:
        """Start a service daemon of this stack (see :mod:`stackfs.service`)."""
        env = dict(os.environ)
        env["STACKFS_RUN_ID"] = self.run_id
        if self.log_dir is not None and "log" not in kw:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            kw["log"] = self.log_dir / f"service-{len(self.services)}-{kind}.log"
        svc = start_service(argv, kind, env=env, **kw)
        self.services.append(svc)
        return svc

    def close(self, timeout: float = 5.0) -> list[UnmountReport]:
        """Unmount everything, top-down, then stop the services. Hung connections are aborted
        first, all of them."""
        try:
            for m in [m for m in self.mounts if m.conn and m.waiting()]:
                abort_if_ours(m)
            while self.mounts:
                m = self.mounts.pop()
                self.reports.append(unmount(m, timeout=timeout))
        finally:
            while self.services:
                self.services.pop().stop()
        return self.reports

    def __enter__(self) -> Stack:
        if _in_main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self._old_handler is not None:
                signal.signal(signal.SIGTERM, self._old_handler)
                self._old_handler = None


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@dataclass
class CleanupAction:
    mountpoint: str | None
    pid: int | None
    what: str
    #: a process was left alone: it did not prove to be the daemon (see :mod:`stackfs.daemonid`)
    refused: bool = False


def cleanup(run_id: str | None = None, timeout: float = 3.0) -> list[CleanupAction]:
    """Remove testbed mounts (fsname ``stackfs:...``) and their daemons; nothing else.

    With ``run_id``, only those whose daemon recorded that run id. A process is signalled only
    once it proved to be the daemon (:mod:`stackfs.daemonid`: it holds the mount's FUSE
    connection; a service, its control socket), never on a file's word: one that does not is
    left alone and reported (``refused``). :class:`~stackfs.rundir.RunDirError` when the run
    directory cannot be trusted.
    """
    rundir.check_root()
    actions: list[CleanupAction] = []
    infos = rundir.all_infos()
    for entry in reversed(mountinfo.testbed_mounts()):
        pid = entry.daemon_pid
        info = infos.get(pid) if pid is not None else None
        if run_id is not None and (info is None or info.get("run_id") != run_id):
            continue
        m = Mount(Path(entry.mountpoint), pid or 0, entry.conn, entry.source, entry.kind or "?")
        proof = daemonid.of_mount(pid, entry.conn, info) if pid and alive(pid) else None
        if proof is None or not proof.ok:
            m.pid = 0  # gone, or not the daemon of this mount: abort and detach, signal nobody
        rep = unmount(m, timeout=timeout) if m.pid else _unmount_orphan(m, timeout)
        how = "unmounted" if rep.clean else "aborted and detached" if rep.aborted else "detached"
        refused = proof is not None and not proof.ok and not proof.stale
        if refused and proof is not None:
            how += f"; process {pid} not signalled ({proof.why})"
        actions.append(CleanupAction(entry.mountpoint, pid, how, refused))
    for pid, info in infos.items():
        if run_id is not None and info.get("run_id") != run_id:
            continue
        if not alive(pid):
            rundir.remove(pid)
        elif not _mounted_by(Path(info.get("mountpoint") or ""), pid):
            what = "daemon" if info.get("mountpoint") is not None else f"{info.get('kind')} service"
            proof = _kill_proven(pid, info)
            if proof.ok:
                actions.append(CleanupAction(info.get("mountpoint"), pid, f"killed {what}"))
            elif not proof.stale:
                why = f"{what} not killed ({proof.why})"
                actions.append(CleanupAction(info.get("mountpoint"), pid, why, True))
                continue
            rundir.remove(pid)
    for pid in rundir.dead_without_info():  # died while starting: belongs to no run
        rundir.remove(pid)
    return actions


def _kill_proven(pid: int, info: dict[str, Any]) -> daemonid.Proof:
    """SIGKILL ``pid`` if it proves to be the daemon ``info`` describes. Through a pidfd opened
    before the check: the process checked is the process signalled, even if the pid is reused."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return daemonid.Proof(False, "is gone", stale=True)
    try:
        proof = daemonid.of_info(pid, info)
        if proof.ok:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return proof
    finally:
        os.close(pidfd)


def _unmount_orphan(m: Mount, timeout: float) -> UnmountReport:
    t0 = time.monotonic()
    aborted = abort_if_ours(m)
    detached = lazy_detach(m.mountpoint, timeout=timeout)
    return UnmountReport(
        str(m.mountpoint), False, aborted, detached, False, time.monotonic() - t0, m.pid
    )


def is_testbed_daemon(pid: int, mountpoint: str | None = None) -> bool:
    """Before signalling ``pid``: is it the daemon of the mount at ``mountpoint`` (it holds that
    mount's FUSE connection), or, without one, the daemon its run directory describes? See
    :mod:`stackfs.daemonid`; a file alone is never enough."""
    info = rundir.read_info(pid)
    if mountpoint is None:
        return info is not None and daemonid.of_info(pid, info).ok
    entry = mountinfo.find(mountpoint)
    conn = entry.conn if entry is not None else (info or {}).get("conn")
    return daemonid.of_mount(pid, conn, info).ok
