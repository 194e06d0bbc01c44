"""``stackfs automountd``: the automount daemon of an autofs backend (seed 001), a service process.

automount(8) for one indirect map: the autofs backend (:mod:`backends.autofs`, the kernel module
of this model) starts it with its mount and connects to ``RUN_DIR/PID/autofs.sock`` (the autofs
pipe); one JSON object per line each way:

``{"type": "missing", "token": N, "name": KEY}``  (``autofs_packet_missing_indirect``)
    create the mount point directory ``MOUNTPOINT/KEY`` **through the autofs mount** (a real
    ``mkdir(2)``, which takes the root directory's i_rwsem in ``filename_create``), bind-mount
    the map entry ``MAP/KEY`` on it (a real ``mount(2)``), then answer ``{"op": "ready",
    "token": N}`` (``AUTOFS_IOC_READY``) or ``{"op": "fail", "token": N, "errno": E}``;
``{"type": "expire", "token": N, "name": KEY}``  (``autofs_packet_expire_indirect``)
    unmount ``MOUNTPOINT/KEY`` (EBUSY while in use: the expire fails), remove the mount point
    directory through the mount (``rmdir(2)``), then answer ready or fail.

Before it works on a packet it says ``{"op": "working", "token": N, "tid": T}``: the thread
that will complete the request, which the backend shows as the holder of the wait queue.

Each packet is handled in a thread of its own (named ``automountd``), as automount(8) does, so
the control socket (``stackfs state --pid PID``) answers while a mount hangs in the kernel.
When the backend's connection closes (its daemon exited, or was killed) or on SIGTERM, the
daemon detaches every mount it made and exits; it also asks the kernel for SIGTERM when the
process that started it dies (``PR_SET_PDEATHSIG``), so nothing of it is left mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import threading
import time
from typing import Any

import trio

from stackfs.linux import libc
from stackfs.runtime import control, rundir, service

KIND = "automount"
SOCKET = "autofs.sock"
COMM = b"automountd"


def socket_path(pid: int) -> str:
    return str(rundir.daemon_dir(pid) / SOCKET)


class Automounter:
    """The daemon's state: what it mounted, what it is working on."""

    def __init__(self, autofs: str, map_dir: str) -> None:
        self.autofs = os.path.abspath(autofs)
        self.map_dir = os.path.abspath(map_dir)
        #: key -> {"source", "since"}
        self.mounted: dict[str, dict[str, Any]] = {}
        #: token -> {"type", "name", "tid", "step", "since"}
        self.working: dict[int, dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self._mutex = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "autofs": self.autofs,
            "map": self.map_dir,
            "mounted": dict(self.mounted),
            "working": {str(k): v for k, v in self.working.items()},
            "done": self.done[-20:],
            "counts": dict(self.counts),
        }

    def _step(self, token: int, step: str) -> None:
        with self._mutex:
            if token in self.working:
                self.working[token]["step"] = step

    # -- in a worker thread -----------------------------------------------------------------

    def mount(self, token: int, key: str) -> None:
        """``handle_packet_missing_indirect``: mkdir the mount point through the mount, bind."""
        target = os.path.join(self.autofs, key)
        source = os.path.realpath(os.path.join(self.map_dir, key))
        if not os.path.isdir(source):
            raise OSError(errno.ENOENT, f"no map entry {key!r}", source)
        self._step(token, f"mkdir {target}")
        created = False
        try:
            os.mkdir(target, 0o755)
            created = True
        except FileExistsError:
            pass
        self._step(token, f"mount --bind {source} {target}")
        try:
            libc.bind_mount(os.fsencode(source), os.fsencode(target))
        except OSError:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(target)
            raise
        with self._mutex:
            self.mounted[key] = {"source": source, "since": time.time()}

    def expire(self, token: int, key: str) -> None:
        """``handle_packet_expire_indirect``: umount (EBUSY if in use), rmdir the mount point."""
        target = os.path.join(self.autofs, key)
        if key in self.mounted:
            self._step(token, f"umount {target}")
            libc.umount2(os.fsencode(target), 0)
            with self._mutex:
                self.mounted.pop(key, None)
        self._step(token, f"rmdir {target}")
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(target)

    def handle(self, packet: dict[str, Any], said_working) -> dict[str, Any]:
        """Run one packet in this thread; the answer to send back."""
        libc.set_thread_name(COMM)
        token, key, kind = int(packet["token"]), str(packet["name"]), packet.get("type")
        tid = threading.get_native_id()
        with self._mutex:
            self.working[token] = {
                "type": kind,
                "name": key,
                "tid": tid,
                "step": "start",
                "since": time.time(),
            }
        said_working(token, tid)
        try:
            if kind == "missing":
                self.mount(token, key)
            elif kind == "expire":
                self.expire(token, key)
            else:
                raise OSError(errno.EINVAL, f"unknown packet type {kind!r}")
            answer: dict[str, Any] = {"op": "ready", "token": token}
        except OSError as exc:
            answer = {
                "op": "fail",
                "token": token,
                "errno": exc.errno or errno.EIO,
                "message": str(exc),
            }
        with self._mutex:
            item = self.working.pop(token, {})
            self.done.append(
                {
                    **item,
                    "token": token,
                    "answer": answer["op"],
                    "errno": answer.get("errno"),
                    "end": time.time(),
                }
            )
            self.counts[f"{kind}_{answer['op']}"] = self.counts.get(f"{kind}_{answer['op']}", 0) + 1
        return answer

    def release_all(self) -> None:
        """Detach every mount this daemon made (shutdown; the mount points go with the
        autofs mount)."""
        for key in list(self.mounted):
            with contextlib.suppress(OSError):
                libc.umount2(os.fsencode(os.path.join(self.autofs, key)), libc.MNT_DETACH)
            self.mounted.pop(key, None)


async def _session(am: Automounter, stream: trio.SocketStream, done: trio.Event) -> None:
    """The autofs pipe: packets in, answers out, until the backend goes away."""
    send_lock = trio.Lock()

    async def send(msg: dict[str, Any]) -> None:
        async with send_lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(msg).encode() + b"\n")

    async def work(packet: dict[str, Any]) -> None:
        token = trio.lowlevel.current_trio_token()

        def said_working(tok: int, tid: int) -> None:
            trio.from_thread.run(
                send, {"op": "working", "token": tok, "tid": tid}, trio_token=token
            )

        answer = await trio.to_thread.run_sync(
            am.handle, packet, said_working, abandon_on_cancel=True
        )
        await send(answer)

    try:
        async with trio.open_nursery() as nursery:
            async for msg in control.json_lines(stream):
                nursery.start_soon(work, msg)
            nursery.cancel_scope.cancel()
    finally:
        done.set()


async def _serve_pipe(
    am: Automounter, path: str, done: trio.Event, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    listener = await service.unix_listener(path, 1)
    task_status.started()
    stream = await listener.accept()
    await listener.aclose()
    await _session(am, stream, done)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``stackfs automountd``: the verb (the autofs backend starts it itself, with the mount)."""
    p = sub.add_parser(
        "automountd",
        help="run the automount daemon of an autofs backend mount (it starts one itself)",
        description="The automount daemon of an autofs backend (seed 001): for each mount "
        "request it makes the mount point with a real mkdir through the autofs mount, "
        "bind-mounts DIR/KEY on it and reports completion; for an expire it unmounts and "
        "removes it. An autofs backend mount starts and reaps its own; run it by hand only to "
        "watch one in the foreground.",
    )
    add_arguments(p)
    p.set_defaults(func=lambda args: main(["--autofs", args.autofs, "--map", args.map]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stackfs automountd")
    add_arguments(p)
    return _run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--autofs",
        required=True,
        metavar="MOUNTPOINT",
        help="the autofs mount whose map keys this daemon mounts",
    )
    p.add_argument(
        "--map",
        required=True,
        metavar="DIR",
        help="the indirect map: DIR/KEY is bind-mounted on MOUNTPOINT/KEY",
    )


def _run(args: argparse.Namespace) -> int:
    with contextlib.suppress(OSError):
        libc.set_pdeathsig(signal.SIGTERM)
    with contextlib.suppress(OSError):
        libc.set_thread_name(COMM)
    am = Automounter(args.autofs, args.map)
    path = socket_path(os.getpid())

    async def run(nursery: trio.Nursery, info: dict[str, Any]) -> None:
        done = trio.Event()
        try:
            await nursery.start(_serve_pipe, am, path, done)
            service.ready()
            await done.wait()
        finally:
            am.release_all()

    return service.serve(
        KIND,
        {},
        run,
        describe=am.describe,
        extra={"socket": path, "autofs": am.autofs, "map": am.map_dir},
    )


if __name__ == "__main__":
    raise SystemExit(main())
