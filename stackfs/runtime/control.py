"""The control socket: every testbed daemon answers state queries out of band.

A daemon listens on ``RUN_DIR/PID/control.sock`` (see :mod:`stackfs.runtime.rundir`). The protocol
is one
JSON object per line each way: ``{"op": NAME, ...}`` answered by ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "errno": N}``. The socket lives outside every FUSE mount, so it
answers while the mount itself is wedged: that is how ``stackfs state`` and the watchdog see the
modelled kernel state of a deadlocked layer.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from stackfs.runtime import mountinfo, rundir

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_LINE = 1 << 20


class ControlError(Exception):
    """A control request failed; ``errno`` is set when the daemon gave one."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


async def serve(
    path: Path,
    handlers: dict[str, Handler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` on the unix socket ``path`` until cancelled."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def serve_one(stream: trio.SocketStream) -> None:
        await _serve_one(stream, handlers)

    try:
        await trio.serve_listeners(serve_one, [listener], handler_nursery=None)
    finally:
        try:
            path.unlink()
        except OSError:
            pass


async def json_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects a peer sends on ``stream``, one per line, until it closes (or breaks)."""
    buf = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


async def _serve_one(stream: trio.abc.Stream, handlers: dict[str, Handler]) -> None:
    buf = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buf += data
            if len(buf) > MAX_LINE:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                reply = await _dispatch(line, handlers)
                try:
                    await stream.send_all(json.dumps(reply, default=str).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


async def _dispatch(line: bytes, handlers: dict[str, Handler]) -> dict[str, Any]:
    try:
        request = json.loads(line)
        op = request["op"]
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": "bad request: expected a JSON object with an 'op'"}
    handler = handlers.get(op)
    if handler is None:
        return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(sorted(handlers))}"}
    try:
        reply = await handler(request)
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc), "errno": exc.errno}
    except (ValueError, KeyError, LookupError) as exc:
        return {"ok": False, "error": str(exc).strip("'\"")}
    return {"ok": True, **reply}


def socket_path_for_pid(pid: int) -> Path:
    return rundir.daemon_dir(pid) / "control.sock"


def socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    """The control socket of the testbed daemon serving ``mountpoint`` (found via mountinfo)."""
    entry = mountinfo.find(mountpoint)
    if entry is None:
        raise ControlError(f"{mountpoint}: not a mount point", errno.EINVAL)
    pid = entry.daemon_pid
    if pid is None:
        raise ControlError(
            f"{mountpoint}: not a stackfs testbed mount (fsname {entry.source!r})", errno.EINVAL
        )
    return socket_path_for_pid(pid)


def query_path(path: Path, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the socket at ``path`` and return the reply (blocking, with timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no daemon answers at {path}: {exc.strerror}", exc.errno) from exc
        except PermissionError as exc:  # RUN_DIR/PID is root's 0700 (see stackfs.runtime.rundir)
            raise ControlError(
                f"{path}: permission denied (a daemon's control socket is root's: run as root)",
                exc.errno,
            ) from exc
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError as exc:
                raise ControlError(
                    f"{path}: no answer within {timeout} s", errno.ETIMEDOUT
                ) from exc
            if not chunk:
                raise ControlError(f"{path}: daemon closed the connection", errno.ECONNRESET)
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the reply is not a JSON object", errno.EPROTO)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"), reply.get("errno"))
    reply.pop("ok", None)
    return reply


def query(
    mountpoint: str | os.PathLike[str], request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Send one request to the daemon serving ``mountpoint``."""
    return query_path(socket_path(mountpoint), request, timeout)


def query_pid(pid: int, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    return query_path(socket_path_for_pid(pid), request, timeout)
