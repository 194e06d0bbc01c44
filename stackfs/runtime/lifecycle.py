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

from stackfs.linux import libc
from stackfs.linux.proc import alive, terminate
from stackfs.linux.proc import uid_of as proc_uid
from stackfs.runtime import cgroup as cgroup_mod
from stackfs.runtime import daemonid, fusectl, mountinfo, rundir
from stackfs.runtime.cgroup import RunCgroup
from stackfs.runtime.service import Service, spawn_ready, timeout_factor
from stackfs.runtime.service import start as start_service


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

    def control(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Ask the daemon over its control socket (works while the mount is wedged)."""
        from stackfs.runtime import control

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
    cgroup: RunCgroup | None = None,
) -> Mount:
    """Start ``argv`` (a daemon that runs :func:`stackfs.runtime.daemon.serve` in the foreground)
    and
    return once ``mountpoint`` is live.

    The daemon reports readiness on a pipe (``STACKFS_READY_FD``); its stdout and stderr go to
    ``log`` (a temporary file by default). ``detach`` starts it in a session of its own and does
    not keep it as a child to reap (what ``stackfs mount`` without ``-f`` does). ``cgroup``:
    the run's (:class:`stackfs.runtime.cgroup.RunCgroup`), which the daemon joins before it execs.
    ``timeout`` is multiplied by ``$STACKFS_TIMEOUT_FACTOR`` (a slow machine: a VM under software
    emulation starts a Python daemon several times slower; the wait still ends on "ready").
    """
    # resolved as the kernel resolves it when the daemon mounts there: a symlinked mount point
    # shows up in mountinfo under its target (nothing is mounted there yet to walk into)
    mp = Path(os.path.realpath(mountpoint))
    proc, log, msg = spawn_ready(
        argv, "stackfs-daemon-", env=env, log=log, timeout=timeout, cgroup=cgroup
    )
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

    Its daemons and services (and the workload processes a runner starts with
    :attr:`cgroup`) live in a cgroup of their own (:class:`stackfs.runtime.cgroup.RunCgroup`, made
    at
    the first mount or service); :meth:`close` ends with ``cgroup.kill`` and ``rmdir``.
    Where there is none, :attr:`cgroup_note` says why (one line) and processes are reaped by
    pid only.
    """

    def __init__(self, run_id: str | None = None, log_dir: Path | None = None) -> None:
        self.mounts: list[Mount] = []
        self.reports: list[UnmountReport] = []
        #: service daemons (no mount: a lock manager, an automounter), stopped after the mounts
        self.services: list[Service] = []
        self.run_id = run_id or rundir.run_id() or f"run-{os.getpid()}-{int(time.time())}"
        self.log_dir = log_dir
        self._old_handler: Any = None
        self._cgroup: RunCgroup | None = None
        #: why this stack has no cgroup (None while it has one, or has not needed one yet)
        self.cgroup_note: str | None = None
        #: the processes ``cgroup.kill`` found still there when the stack went down
        self.cgroup_killed: set[int] = set()

    @property
    def cgroup(self) -> RunCgroup | None:
        """This stack's cgroup, made on first use (None where runs get none: see
        :attr:`cgroup_note`)."""
        if self._cgroup is None and self.cgroup_note is None:
            try:
                self._cgroup = RunCgroup.create(self.run_id)
            except (OSError, cgroup_mod.CgroupError) as exc:
                self.cgroup_note = f"no cgroup for this run: {exc}"
            if self._cgroup is None and self.cgroup_note is None:
                self.cgroup_note = f"no cgroup for this run: {cgroup_mod.unavailable()}"
                _say_once(self.cgroup_note + "; its processes are reaped by pid")
        return self._cgroup

    def _child(self, kw: dict[str, Any], log_name: str) -> dict[str, str]:
        """The environment of a process of this stack (its run id), and its log file in
        ``log_dir`` unless the caller gave one."""
        env = dict(os.environ)
        env["STACKFS_RUN_ID"] = self.run_id
        if self.log_dir is not None and "log" not in kw:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            kw["log"] = self.log_dir / log_name
        return env

    def mount(self, argv: Sequence[str], mountpoint: str | os.PathLike[str], **kw: Any) -> Mount:
        env = self._child(kw, f"{len(self.mounts)}-{Path(mountpoint).name}.log")
        m = start_daemon(argv, mountpoint, env=env, cgroup=self.cgroup, **kw)
        self.mounts.append(m)
        return m

    def service(self, argv: Sequence[str], kind: str, **kw: Any) -> Service:
        """Start a service daemon of this stack (see :mod:`stackfs.runtime.service`)."""
        env = self._child(kw, f"service-{len(self.services)}-{kind}.log")
        svc = start_service(argv, kind, env=env, cgroup=self.cgroup, **kw)
        self.services.append(svc)
        return svc

    def close(self, timeout: float = 5.0) -> list[UnmountReport]:
        """Unmount everything, top-down, then stop the services. Hung connections are aborted
        first, all of them; whatever is left in the stack's cgroup then is killed
        (``cgroup.kill``) and the cgroup removed."""
        try:
            for m in [m for m in self.mounts if m.conn and m.waiting()]:
                abort_if_ours(m)
            while self.mounts:
                m = self.mounts.pop()
                self.reports.append(unmount(m, timeout=timeout))
        finally:
            try:
                while self.services:
                    self.services.pop().stop()
            finally:
                if self._cgroup is not None:
                    self.cgroup_killed |= self._cgroup.kill(timeout)
                    self._cgroup.remove()
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


_said: set[str] = set()


def _say_once(line: str) -> None:
    """One line on stderr, once per process (a fallback every stack of the run shares)."""
    if line not in _said:
        _said.add(line)
        print(f"stackfs: {line}", file=sys.stderr)


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
    #: a process was left alone: it did not prove to be the daemon (see
    #: :mod:`stackfs.runtime.daemonid`)
    refused: bool = False
    #: why it was the caller's to remove: ``daemon gone``, ``run RUN``, ``yours``, ``--all``
    why: str = ""
    #: a run's cgroup (``mountpoint`` is its path), not a mount or a daemon
    cgroup: bool = False

    def render(self) -> str:
        """``WHAT: MOUNTPOINT (daemon PID; WHY)``; a cgroup's line names no daemon."""
        said = [] if self.cgroup else [f"daemon {self.pid or '?'}"]
        said += [self.why] if self.why else []
        return f"{self.what}: {self.mountpoint or '-'}" + (f" ({'; '.join(said)})" if said else "")


@dataclass
class Owner:
    """Whose leftovers a cleanup may remove (``stackfs cleanup``'s scope, issue 24 item 3).

    With ``dead`` (``stackfs cleanup``), what is dead: a mount whose daemon is gone, a run
    cgroup with no process left, anyone's; besides that, the run ``run_id`` (the run id the
    kernel shows in the mount's fsname, or the run's cgroup), with ``mine`` what runs as the
    caller's real uid, with ``everything`` all of the testbed's. A runner cleaning up after
    its own run asks for its run alone (``dead=False``): another run's dead mount is that
    run's to find."""

    run_id: str | None = None
    mine: bool = False
    everything: bool = False
    dead: bool = True

    def why(self, gone: bool, label: str | None, pid: int | None) -> str | None:
        """Why the caller may remove a thing (None: not theirs); ``label``: its run."""
        if self.everything:
            return "--all"
        if self.run_id is not None and label == mountinfo.run_label(self.run_id):
            return f"run {self.run_id}"
        if gone and self.dead:
            return "daemon gone"
        if self.mine and pid is not None and proc_uid(pid) == os.getuid():
            return "yours"
        return None


def cleanup(
    run_id: str | None = None,
    timeout: float = 3.0,
    *,
    owner: Owner | None = None,
    dry_run: bool = False,
) -> list[CleanupAction]:
    """Remove the testbed's leftovers that ``owner`` may remove, and nothing else: testbed
    mounts (fsname ``stackfs:...``) and their daemons, services, run cgroups.

    ``run_id`` is ``Owner(run_id=run_id, dead=False)``: that run's alone (what a runner and a
    test session clean up after themselves). ``stackfs cleanup`` passes an owner with
    ``dead``: then what is dead (mounts whose daemon is gone, empty run cgroups) goes too.
    A run's recovery: its FUSE connections aborted (a hung mount) and its mounts detached,
    its daemons and services killed, then whatever is left in its cgroup killed
    (``cgroup.kill``) and the cgroup removed. A process is signalled only
    once it proved to be the daemon (:mod:`stackfs.runtime.daemonid`: it holds the mount's FUSE
    connection; a service, its control socket), never on a file's word: one that does not is
    left alone and reported (``refused``). ``dry_run``: the actions it would take, none taken.
    :class:`~stackfs.runtime.rundir.RunDirError` when the run directory cannot be trusted.
    """
    if owner is None:
        owner = Owner(run_id=run_id, dead=False)
    rundir.check_root()
    actions: list[CleanupAction] = []
    infos = rundir.all_infos()
    run_pids = (
        cgroup_mod.pids_under(path)
        if owner.run_id is not None and (path := cgroup_mod.run_path(owner.run_id))
        else set()
    )
    for entry in reversed(mountinfo.testbed_mounts()):
        pid = entry.daemon_pid
        info = infos.get(pid) if pid is not None else None
        proof = daemonid.of_mount(pid, entry.conn, info) if pid and alive(pid) else None
        gone = proof is None or proof.stale
        label = entry.run_label
        if pid in run_pids and owner.run_id is not None:
            label = mountinfo.run_label(owner.run_id)  # its daemon is in the run's cgroup
        why = owner.why(gone, label, pid if not gone else None)
        if why is None:
            continue
        if dry_run:
            actions.append(CleanupAction(entry.mountpoint, pid, "would unmount", why=why))
            continue
        m = Mount(Path(entry.mountpoint), pid or 0, entry.conn, entry.source, entry.kind or "?")
        if proof is None or not proof.ok:
            m.pid = 0  # gone, or not the daemon of this mount: abort and detach, signal nobody
        rep = unmount(m, timeout=timeout) if m.pid else _unmount_orphan(m, timeout)
        how = "unmounted" if rep.clean else "aborted and detached" if rep.aborted else "detached"
        refused = proof is not None and not proof.ok and not proof.stale
        if refused and proof is not None:
            how += f"; process {pid} not signalled ({proof.why})"
        actions.append(CleanupAction(entry.mountpoint, pid, how, refused, why))
    for pid, info in infos.items():
        rid = info.get("run_id")
        label = mountinfo.run_label(rid) if isinstance(rid, str) and rid else None
        if pid in run_pids and owner.run_id is not None:
            label = mountinfo.run_label(owner.run_id)
        if not alive(pid):
            if not dry_run and owner.why(True, label, None) is not None:
                rundir.remove(pid)  # nobody's any more
        elif not _mounted_by(Path(info.get("mountpoint") or ""), pid):
            why = owner.why(False, label, pid)
            if why is None:
                continue
            what = "daemon" if info.get("mountpoint") is not None else f"{info.get('kind')} service"
            if dry_run:
                actions.append(
                    CleanupAction(info.get("mountpoint"), pid, f"would kill {what}", why=why)
                )
                continue
            proof = _kill_proven(pid, info)
            if proof.ok:
                actions.append(
                    CleanupAction(info.get("mountpoint"), pid, f"killed {what}", why=why)
                )
            elif not proof.stale:
                text = f"{what} not killed ({proof.why})"
                actions.append(CleanupAction(info.get("mountpoint"), pid, text, True, why))
                continue
            rundir.remove(pid)
    if not dry_run:
        for pid in rundir.dead_without_info():  # died while starting: belongs to no run
            rundir.remove(pid)
    actions += _cleanup_cgroups(owner, dry_run, timeout)
    return actions


def _cleanup_cgroups(owner: Owner, dry_run: bool, timeout: float) -> list[CleanupAction]:
    """The run cgroups ``owner`` may remove: the empty stacks of a run whose process is gone
    silently (:func:`stackfs.runtime.cgroup.remove_dead`: a live stack's stays, even empty); one
    with processes left after its mounts and daemons went (the workload of a run whose runner
    was SIGKILLed): ``cgroup.kill``, then ``rmdir``."""
    out = []
    for name, path in sorted(cgroup_mod.run_cgroups().items()):
        pids = cgroup_mod.pids_under(path)
        if not pids:
            ours = owner.run_id is not None and name == mountinfo.run_label(owner.run_id)
            if not dry_run and (owner.dead or owner.everything or ours):
                cgroup_mod.remove_dead(path)
            continue
        mine = owner.mine and all(proc_uid(p) in (os.getuid(), None) for p in pids)
        if owner.everything:
            why = "--all"
        elif owner.run_id is not None and name == mountinfo.run_label(owner.run_id):
            why = f"run {owner.run_id}"
        elif mine:
            why = "yours"
        else:
            continue
        listed = ", ".join(map(str, sorted(pids)))
        if dry_run:
            what = f"would kill pids {listed} of cgroup"
            out.append(CleanupAction(str(path), None, what, why=why, cgroup=True))
            continue
        killed = cgroup_mod.kill(path, timeout)
        cgroup_mod.remove(path)
        if killed:
            listed = ", ".join(map(str, sorted(killed)))
            what = f"killed pids {listed} of cgroup"
            out.append(CleanupAction(str(path), None, what, why=why, cgroup=True))
    return out


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
    :mod:`stackfs.runtime.daemonid`; a file alone is never enough."""
    info = rundir.read_info(pid)
    if mountpoint is None:
        return info is not None and daemonid.of_info(pid, info).ok
    entry = mountinfo.find(mountpoint)
    conn = entry.conn if entry is not None else (info or {}).get("conn")
    return daemonid.of_mount(pid, conn, info).ok
