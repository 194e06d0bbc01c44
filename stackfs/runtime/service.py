"""Service daemons: testbed processes that serve no mount of their own (a lock manager, an
automounter), with the same run-directory convention as the mount daemons.

A service writes ``RUN_DIR/PID/info.json`` with ``"mountpoint": null`` and its ``kind`` (and the
``run_id`` of the stack that started it), listens on ``RUN_DIR/PID/control.sock`` (``state``,
``ping`` and its own ops) and may keep more sockets in that directory. That is how the watchdog
finds it (:func:`running`), how ``stackfs state --pid PID`` asks it, and how ``stackfs cleanup
--run-id`` kills it after the process that started it was SIGKILLed.

In the service process: :func:`serve`. In the process that starts it: :func:`start` (returns
once the service said it is ready) and :meth:`Service.stop`;
:class:`stackfs.runtime.lifecycle.Stack`
starts services before the mounts that use them and stops them after those are down.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from stackfs.linux.proc import alive as proc_alive
from stackfs.linux.proc import terminate
from stackfs.runtime import control, rundir

if TYPE_CHECKING:
    from stackfs.runtime.cgroup import RunCgroup


class ServiceError(Exception):
    """A service could not be started; the message carries its own error output."""


def is_service(info: dict[str, Any]) -> bool:
    return info.get("mountpoint") is None and bool(info.get("kind"))


def running(run_id: str | None = None) -> dict[int, dict[str, Any]]:
    """pid -> info of every live service daemon (of ``run_id`` if given)."""
    out = {}
    for pid, info in rundir.all_infos().items():
        if not is_service(info) or (run_id is not None and info.get("run_id") != run_id):
            continue
        if proc_alive(pid):
            out[pid] = info
    return out


# -- in the service process -------------------------------------------------------------------

Main = Callable[[trio.Nursery, dict[str, Any]], Awaitable[None]]


def serve(
    kind: str,
    handlers: dict[str, control.Handler],
    main: Main,
    describe: Callable[[], dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Run a service: run dir, control socket, signals, then ``main(nursery, info)`` until it
    returns or a signal ends it. ``describe()`` is the ``state`` answer."""
    pid = os.getpid()
    info: dict[str, Any] = {
        "pid": pid,
        "kind": kind,
        "mountpoint": None,
        "run_id": rundir.run_id(),
        "argv": list(sys.argv),
        "started": time.time(),
        **(extra or {}),
    }
    try:
        run = rundir.write_info(pid, info)
    except rundir.RunDirError as exc:
        print(f"stackfs {kind}: {exc}", file=sys.stderr)
        return 1

    async def state(_req: dict[str, Any]) -> dict[str, Any]:
        return {
            "daemon": {**info, "service": True},
            "now": time.time(),
            **(describe() if describe else {}),
        }

    async def ping(_req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": pid}

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                control.serve, run / "control.sock", {"state": state, "ping": ping, **handlers}
            )
            nursery.start_soon(_signals, nursery.cancel_scope)
            await main(nursery, info)
            nursery.cancel_scope.cancel()

    log = claim_temp_log()
    try:
        trio.run(_main)
    except KeyboardInterrupt:
        pass
    finally:
        rundir.remove(pid)
        drop_empty_log(log)
    return 0


async def _signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _sig in signals:
            scope.cancel()
            return


#: the temporary log :func:`spawn_ready` made for the process it starts (its stdout and stderr)
TEMP_LOG_ENV = "STACKFS_TEMP_LOG"


def claim_temp_log() -> str | None:
    """At start-up: the temporary log :func:`spawn_ready` made for this process, taken out of
    the environment (so that no child of ours inherits the claim)."""
    return os.environ.pop(TEMP_LOG_ENV, None) or None


def drop_empty_log(name: str | None) -> None:
    """At exit: remove this process's temporary log if nothing was written to it, so a
    detached mount leaves no empty ``/tmp/stackfs-daemon-*.log`` behind. Only a regular file
    of ours that is still this process's stdout (same device and inode as fd 1) is removed."""
    if not name:
        return
    with contextlib.suppress(OSError):
        out, st = os.fstat(1), os.lstat(name)
        if (
            (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino)
            and stat.S_ISREG(st.st_mode)
            and st.st_uid == os.geteuid()
            and st.st_size == 0
        ):
            os.unlink(name)


def ready(message: str = "ready") -> None:
    """Tell the process that started us (:func:`start`) that the service is up."""
    fd = os.environ.pop("STACKFS_READY_FD", None)
    if fd is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(int(fd), message.encode() + b"\n")
        os.close(int(fd))


# -- in the process that starts it ------------------------------------------------------------


@dataclass
class Service:
    """A running service daemon started by :func:`start`."""

    kind: str
    pid: int
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        return rundir.daemon_dir(self.pid)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return proc_alive(self.pid)

    def control(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return control.query_pid(self.pid, request, timeout)

    def stop(self, grace: float = 1.0) -> bool:
        """SIGTERM, then SIGKILL after ``grace``; reap. True if it had to be killed."""
        killed = terminate(self.pid, self.alive, grace) == signal.SIGKILL
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=1.0)
        rundir.remove(self.pid)
        return killed


async def unix_listener(path: str, backlog: int) -> trio.SocketListener:
    """A service's own socket (the lock manager's ``dlm.sock``, the automounter's pipe): a
    stale file replaced, bound, root's alone (0600), listening."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    await sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return trio.SocketListener(sock)


def timeout_factor() -> float:
    """``$STACKFS_TIMEOUT_FACTOR``: how many times slower than usual this machine runs a daemon's
    start-up (a VM under software emulation: 5). Start-up waits still end on "ready"."""
    return float(os.environ.get("STACKFS_TIMEOUT_FACTOR") or 1)


def spawn_ready(
    argv: Sequence[str],
    log_prefix: str,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 10.0,
    cgroup: RunCgroup | None = None,
) -> tuple[subprocess.Popen[bytes], Path, bytes]:
    """Start a testbed process (mount daemon or service) in a session of its own (and in
    ``cgroup``, the run's, before it execs) and wait until it reports on its ready pipe
    (``STACKFS_READY_FD``, see ``stackfs.runtime.daemon._ready``).

    Its stdout and stderr go to ``log`` (a temporary file named ``log_prefix*.log`` by
    default). Returns the process, the log and the line it reported (``b"ready..."``, an error
    line, or ``b""`` if it exited or ``timeout`` x :func:`timeout_factor` seconds passed)."""
    deadline = time.monotonic() + timeout * timeout_factor()
    child_env = dict(os.environ if env is None else env)
    child_env.pop(TEMP_LOG_ENV, None)
    if log is None:
        fd, name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
        os.close(fd)
        log = Path(name)
        child_env[TEMP_LOG_ENV] = name  # the child removes it at its exit if it stayed empty
    rfd, wfd = os.pipe()
    child_env["STACKFS_READY_FD"] = str(wfd)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            cgroup.wrap(argv) if cgroup is not None else list(argv),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            env=child_env,
            pass_fds=(wfd,),
            start_new_session=True,
        )
    os.close(wfd)
    msg = b""
    try:
        while not msg.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([rfd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(rfd, 256)
                if not chunk:
                    break
                msg += chunk
    finally:
        os.close(rfd)
    return proc, log, msg


def start(
    argv: Sequence[str],
    kind: str,
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 10.0,
    cgroup: RunCgroup | None = None,
) -> Service:
    """Start a service daemon (in ``cgroup``, the run's); return once it reported ready (else
    :class:`ServiceError`). ``timeout`` is multiplied by :func:`timeout_factor`."""
    proc, log, msg = spawn_ready(
        argv, f"stackfs-{kind}-", env=env, log=log, timeout=timeout, cgroup=cgroup
    )
    svc = Service(kind, proc.pid, log, proc)
    if not msg.startswith(b"ready"):
        svc.stop(grace=0.5)
        text = log.read_text(errors="replace").strip().splitlines()[-10:]
        raise ServiceError(
            f"{kind} service did not start: "
            + ("\n".join(text) if text else f"status {proc.poll()}")
        )
    return svc
