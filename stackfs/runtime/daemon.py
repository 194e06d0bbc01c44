"""Running a pyfuse3 filesystem as a testbed daemon.

Every layer of a stack (a backend, the union, a test filesystem) runs through :func:`serve`: one
process, one FUSE session, one trio loop that serves the FUSE requests, the control socket and
the signals. :class:`TestbedOperations` is the base class of every testbed filesystem: it owns
the daemon's :class:`~stackfs.kernel.state.KernelState` and records each FUSE request in flight
(operation, inode, name, calling task), which is what the watchdog joins into its wait-for graph.

A handler that makes a syscall that may block (a lower branch that is itself a FUSE mount) runs it
through :func:`in_worker`, which records the worker thread's tid on the request: that is the task
the layer below sees as its caller, so the chain can be followed down.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import trio

from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, current_task
from stackfs.linux import libc
from stackfs.runtime import control, fusectl, fusereq, mountinfo, rundir, service

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The in-flight record of the FUSE request this trio task (or worker thread) is serving.
current_request: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "stackfs_current_request", default=None
)

#: pyfuse3 handlers whose first argument is an inode and whose second (if bytes) is a name.
_INODE_OPS = {
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "opendir",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
}
#: pyfuse3 handlers whose first argument is a file handle.
_FH_OPS = {"read", "write", "flush", "release", "fsync", "readdir", "releasedir", "fsyncdir"}
_TRACKED = _INODE_OPS | _FH_OPS | {"statfs"}

#: FUSE requests served, by opcode (``stackfs state``: ``requests``); the FUSE name of a
#: pyfuse3 handler is its name in capitals, but for these two
_OPCODE = {"readdir": "READDIRPLUS", "forget": "FORGET"}
#: counted only (no in-flight record): FORGET and BATCH_FORGET end in ``forget``
_COUNTED = {"forget"}
requests: dict[str, int] = {}


def _counted(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap handler ``fn`` so each call is counted in :data:`requests` (and nothing else)."""
    key = _OPCODE.get(op, op.upper())
    requests.setdefault(key, 0)

    @functools.wraps(fn)
    async def wrapper(self: TestbedOperations, *args: Any) -> Any:
        requests[key] += 1
        return await fn(self, *args)

    wrapper.__stackfs_tracked__ = True  # type: ignore[attr-defined]
    return wrapper


_TASK_TTL = 1.0
_task_cache: dict[int, tuple[float, Task]] = {}


def _task(tid: int) -> Task:
    """The calling task of a request, its comm cached for a second (reading /proc/TID/comm
    costs three syscalls, and a request's whole budget is ~25 µs)."""
    now = time.monotonic()
    hit = _task_cache.get(tid)
    if hit is not None and now - hit[0] < _TASK_TTL:
        return hit[1]
    if len(_task_cache) > 4096:
        _task_cache.clear()
    task = Task.from_pid(tid)
    _task_cache[tid] = (now, task)
    return task


def _tracked(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap handler ``fn`` so the request is in the in-flight table while it runs.

    This runs on every FUSE request, so what does not depend on the arguments (is the first
    argument an inode or a file handle?) is decided here, once per handler.
    """
    inode_op = op in _INODE_OPS
    fh_op = op in _FH_OPS
    header_pid = op in ("read", "write")
    first_arg = op != "statfs"
    request_context = pyfuse3.RequestContext
    set_request = current_request.set
    reset_request = current_request.reset
    set_task = current_task.set
    reset_task = current_task.reset
    key = _OPCODE.get(op, op.upper())
    requests.setdefault(key, 0)
    counts = requests

    @functools.wraps(fn)
    async def wrapper(self: TestbedOperations, *args: Any) -> Any:
        counts[key] += 1
        ctx = args[-1] if args and isinstance(args[-1], request_context) else None
        ino = args[0] if first_arg and args and isinstance(args[0], int) else None
        name = args[1] if len(args) > 2 and isinstance(args[1], bytes) else None
        pid = ctx.pid if ctx is not None else None
        if pid is None and header_pid:
            # READ/WRITE: pyfuse3 gives no context; the request header has the pid
            hdr = fusereq.current()
            pid = hdr.pid if hdr is not None and hdr.pid else None
        inflight = self.kernel.inflight
        rid = inflight.begin(op, ino if inode_op else None, name, pid, ino if fh_op else None)
        token = set_request(rid)
        task_token = set_task(_task(pid)) if pid is not None else None
        try:
            return await fn(self, *args)
        finally:
            if task_token is not None:
                reset_task(task_token)
            reset_request(token)
            inflight.end(rid)

    wrapper.__stackfs_tracked__ = True  # type: ignore[attr-defined]
    return wrapper


class TestbedOperations(pyfuse3.Operations):
    """Base of every testbed filesystem: kernel state, in-flight tracking, control ops.

    Subclasses set :attr:`kind` and may override :meth:`control_ops` to answer more requests on
    the control socket, and :meth:`describe` to add to the ``daemon`` part of the state.
    """

    kind = "test"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for op in _TRACKED | _COUNTED:
            fn = cls.__dict__.get(op)
            if fn is None and getattr(cls, op, None) is getattr(pyfuse3.Operations, op):
                fn = getattr(pyfuse3.Operations, op)  # pyfuse3's ENOSYS answer: count it too
            if fn is not None and not getattr(fn, "__stackfs_tracked__", False):
                setattr(cls, op, (_counted if op in _COUNTED else _tracked)(op, fn))

    def __init__(self, kernel: KernelState | None = None) -> None:
        super().__init__()
        self.kernel = kernel if kernel is not None else KernelState()
        self.variant: str | None = None

    def control_ops(self) -> dict[str, control.Handler]:
        """Extra control-socket operations of this filesystem (name -> async handler)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Extra facts for the ``daemon`` part of the state snapshot."""
        return {}

    #: FUSE mount options this filesystem needs (e.g. ``debug`` for :mod:`stackfs.runtime.fusereq`)
    fuse_options_extra: tuple[str, ...] = ()

    async def started(self, nursery: trio.Nursery) -> None:
        """Called once the mount is live, before READY: start background work (e.g. connect
        to a lock manager). Raising ends the daemon (the mount fails)."""


#: comm of the daemon's worker threads, as the layer below and the watchdog see them
WORKER_COMM = b"stackfs-worker"


def _name_worker() -> None:
    """Give the worker thread a comm that says what it is. trio names its threads anew for
    every job (after the function it runs), so this is done per job: one prctl."""
    libc.set_thread_name(WORKER_COMM)


async def in_worker(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking syscall in a worker thread, recording the thread on the current request.

    The worker's tid is the task the layer below sees as ``ctx.pid``; the watchdog follows a
    request from this daemon to the lower one through it.
    """
    rid = current_request.get()
    state = _active_state

    def run() -> T:
        _name_worker()
        if state is not None and rid is not None:
            state.inflight.set_worker(rid, threading.get_native_id())
        return fn(*args)

    return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


_active_state: KernelState | None = None


@dataclass
class DaemonConfig:
    """How one daemon is mounted."""

    kind: str
    mountpoint: Path
    variant: str | None = None
    fuse_options: list[str] = field(default_factory=list)
    debug: bool = False
    inject: list[str] = field(default_factory=list)
    max_tasks: int = 64
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    #: the mount's source (fsname) as mount(8) gave it; default ``stackfs:KIND:PID[:RUN]``
    source: str | None = None

    @property
    def fsname(self) -> str:
        return self.source or mountinfo.testbed_fsname(self.kind, os.getpid(), rundir.run_id())


def fuse_options(cfg: DaemonConfig) -> set[str]:
    opts = {
        f"fsname={cfg.fsname}",
        f"subtype={mountinfo.SUBTYPE}",
        "default_permissions",
        "allow_other",
    }
    opts.update(o for o in cfg.fuse_options if o)
    if cfg.debug:
        opts.add("debug")
    return opts


def _threads() -> list[dict[str, Any]]:
    out = []
    for t in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{t}/comm").read_text().strip()
        except OSError:
            continue
        out.append({"tid": int(t), "comm": comm})
    return out


def _ready(message: str) -> None:
    """Tell the process that started us (lifecycle.start_daemon) that the mount is live."""
    fd = os.environ.pop("STACKFS_READY_FD", None)
    if fd is None:
        return
    try:
        os.write(int(fd), message.encode() + b"\n")
        os.close(int(fd))
    except (OSError, ValueError):
        pass


#: exit status of a daemon whose FUSE connection was aborted (``/sys/fs/fuse/connections/N/
#: abort``) while its mount was still there, and that was not signalled: the session ended
#: under a live mount, so someone aborted it. (sysexits' EX_TEMPFAIL: a crash exits 1 from an
#: exception, or with its own status, or by a signal.) The repro runner reads it back from the
#: unmount report as the evidence that a run was disturbed from outside.
EXIT_CONNECTION_ABORTED = 75

#: why the serving loop ended (set by the signal watcher; read by :func:`serve`)
_stopped_by: list[str] = []
#: the FUSE connection whose disappearance (aborted, the mount detached) ended the daemon
_connection_gone: list[int] = []


def serve(ops: TestbedOperations, cfg: DaemonConfig) -> int:
    """Mount ``ops`` at ``cfg.mountpoint`` and serve it until unmounted or signalled.

    Returns the exit status: 0 after an unmount or a signal, :data:`EXIT_CONNECTION_ABORTED`
    when the connection was aborted under a live mount. The mount exists when the READY message
    has been written; the control socket is listening from then on.
    """
    global _active_state
    _active_state = ops.kernel
    ops.variant = cfg.variant
    for spec in cfg.inject:
        ops.kernel.inject.configure(spec)
    pid = os.getpid()
    mp = cfg.mountpoint.resolve()
    info = {
        "pid": pid,
        "kind": cfg.kind,
        "variant": cfg.variant,
        "mountpoint": str(mp),
        "fsname": cfg.fsname,
        "run_id": rundir.run_id(),
        "argv": cfg.argv,
        "started": time.time(),
    }
    try:
        run = rundir.write_info(pid, info)
    except rundir.RunDirError as exc:
        print(f"stackfs: {exc}", file=sys.stderr)
        return 1
    try:
        pyfuse3.init(ops, str(mp), fuse_options(cfg) | set(ops.fuse_options_extra))
    except RuntimeError as exc:
        rundir.remove(pid)
        print(f"stackfs: cannot mount {mp}: {exc}", file=sys.stderr)
        return 1
    status = 0
    log = service.claim_temp_log()
    try:
        entry = mountinfo.find(mp)
        info["conn"] = entry.conn if entry is not None else None
        rundir.write_info(pid, info)
        _tune_gc()
        trio.run(_main, ops, cfg, info, run / "control.sock")
        still = mountinfo.find(mp)
        if not _stopped_by and still is not None and still.daemon_pid == pid:
            print(
                f"stackfs: the FUSE connection {info.get('conn')} of {mp} was aborted while "
                "mounted; exiting",
                file=sys.stderr,
            )
            status = EXIT_CONNECTION_ABORTED
        elif _connection_gone and not _stopped_by:
            print(
                f"stackfs: the FUSE connection {_connection_gone[0]} of {mp} was aborted and "
                "the mount detached; exiting",
                file=sys.stderr,
            )
    except KeyboardInterrupt:
        pass
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as exc:  # noqa: BLE001 - reported, the lifecycle cleans up
            print(f"stackfs: unmounting {mp}: {exc}", file=sys.stderr)
        rundir.remove(pid)
        service.drop_empty_log(log)
    return status


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path. A daemon allocates a few
    objects per FUSE request (a node per looked-up name, its reply); with the default
    thresholds a cold ``ls`` of 10,000 names ran ~60 young collections and several full ones
    that walked every module object, costing as much as serving the requests. The objects of
    start-up are frozen (never walked again) and the young generation is larger, so
    collections are rarer; reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _main(ops: TestbedOperations, cfg: DaemonConfig, info: dict[str, Any], sock: Path):
    async def state(_req: dict[str, Any]) -> dict[str, Any]:
        snap = ops.kernel.snapshot()
        snap["daemon"] = {**info, **ops.describe(), "threads": _threads()}
        snap["requests"] = {k: n for k, n in sorted(requests.items()) if n}
        snap["now"] = time.time()
        return snap

    async def inject(req: dict[str, Any]) -> dict[str, Any]:
        point, action = req.get("point"), req.get("action")
        if not point or not action:
            raise ValueError("inject needs 'point' and 'action'")
        ops.kernel.inject.configure(f"{point}={action}")
        return {"inject": ops.kernel.snapshot()["inject"]}

    async def ping(_req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    handlers: dict[str, control.Handler] = {"state": state, "inject": inject, "ping": ping}
    handlers.update(ops.control_ops())

    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, sock, handlers)
        nursery.start_soon(_signals, nursery.cancel_scope)
        if info.get("conn"):
            nursery.start_soon(_watch_connection, info["conn"], nursery.cancel_scope)
        await ops.started(nursery)
        _ready("ready")
        await pyfuse3.main(min_tasks=4, max_tasks=cfg.max_tasks)
        nursery.cancel_scope.cancel()


async def _signals(scope: trio.CancelScope) -> None:
    """SIGTERM/SIGINT/SIGHUP end the daemon at once, also while handlers are stuck (a stuck
    handler is what a deadlocked filesystem has): cancelling the scope cancels them all."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            _stopped_by.append(signal.Signals(sig).name)
            scope.cancel()
            return


async def _watch_connection(conn: int, scope: trio.CancelScope) -> None:
    """End the daemon once its FUSE connection is gone (aborted and detached): pyfuse3's loop
    stops reading at ENODEV, but would wait for stuck handlers that can never reply."""
    path = fusectl.conn_dir(conn)
    if not path.exists():
        return
    while path.exists():
        await trio.sleep(0.25)
    _connection_gone.append(conn)
    scope.cancel()
