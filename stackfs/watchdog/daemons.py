"""Finding the daemon behind each FUSE connection, and asking testbed daemons for their state.

A testbed mount names its daemon in its fsname (:attr:`MountEntry.daemon_pid`); the daemon of a
foreign FUSE mount is the process holding ``/dev/fuse`` open with ``fuse_connection: N`` in its
fdinfo (newer kernels show it: 6.18 does, Debian 12's 6.1 does not, and there the daemon of a
foreign mount stays unknown), found by :func:`fuse_daemons`. A testbed daemon answers ``state``
over its control socket even while its mount is wedged (:func:`query_daemons`).

Helper daemons that serve no mount of their own (an automounter, a lock manager) are found here
too, next to the mount daemons.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stackfs import control
from stackfs.linux import proc
from stackfs.linux.proc import alive, comm_of
from stackfs.mountinfo import MountEntry

__all__ = ["DaemonView", "alive", "comm_of", "fuse_daemons", "query_daemons", "services"]


@dataclass
class DaemonView:
    """The daemon serving one FUSE connection, and (for a testbed daemon) its state snapshot."""

    conn: int
    mountpoint: str
    fsname: str
    pid: int | None
    testbed: bool
    comm: str | None = None
    alive: bool | None = None
    state: dict[str, Any] | None = None
    error: str | None = None
    #: how the daemon was found ("fsname" for testbed mounts, "/dev/fuse fdinfo" otherwise)
    how: str | None = None

    def inflight(self) -> list[dict[str, Any]]:
        return list((self.state or {}).get("inflight") or [])

    def name(self) -> str:
        return f"{self.comm or '?'}/{self.pid}" if self.pid else "unknown daemon"

    def to_json(self) -> dict[str, Any]:
        return {
            "conn": self.conn,
            "mountpoint": self.mountpoint,
            "fsname": self.fsname,
            "pid": self.pid,
            "comm": self.comm,
            "testbed": self.testbed,
            "alive": self.alive,
            "how": self.how,
            "state": self.state,
            "error": self.error,
        }


def fuse_daemons() -> dict[int, list[int]]:
    """conn -> pids holding ``/dev/fuse`` open for it (fdinfo ``fuse_connection``)."""
    out: dict[int, list[int]] = {}
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit():
            continue
        for conn in proc.fuse_connections(int(pid_s)):
            if conn is not None:
                pids = out.setdefault(conn, [])
                if int(pid_s) not in pids:
                    pids.append(int(pid_s))
    return out


def query_daemons(
    entries: Iterable[MountEntry],
    *,
    with_state: bool = True,
    timeout: float = 1.0,
    foreign: dict[int, list[int]] | None = None,
) -> dict[int, DaemonView]:
    """conn -> the daemon of each mount; testbed daemons' state is read over their control socket.

    ``foreign`` is a :func:`fuse_daemons` result for mounts that are not the testbed's (their
    daemon is left unknown when it is None).
    """
    out: dict[int, DaemonView] = {}
    for e in entries:
        pid = e.daemon_pid
        view = DaemonView(e.conn, e.mountpoint, e.source, pid, e.is_testbed and pid is not None)
        if view.testbed:
            view.how = "fsname"
        elif foreign is not None and foreign.get(e.conn):
            view.pid, view.how = foreign[e.conn][0], "/dev/fuse fdinfo"
        if view.pid:
            view.alive = alive(view.pid)
            view.comm = comm_of(view.pid)
        if view.testbed and with_state and view.alive and view.pid is not None:
            try:
                view.state = control.query_pid(view.pid, {"op": "state"}, timeout=timeout)
            except (control.ControlError, OSError, ValueError) as exc:
                view.error = str(exc)
        out[e.conn] = view
    return out


def services(with_state: bool = True, timeout: float = 1.0) -> dict[int, dict[str, Any]]:
    """pid -> a testbed service daemon (no mount: the lock manager ``stackfs dlmd``, an
    automounter), found by its run directory (``info.json`` with ``"mountpoint": null``, see
    :mod:`stackfs.service`), with its ``state`` read over its control socket."""
    from stackfs import service

    out: dict[int, dict[str, Any]] = {}
    for pid, info in service.running().items():
        entry: dict[str, Any] = {
            "pid": pid,
            "kind": info.get("kind"),
            "run_id": info.get("run_id"),
            "comm": comm_of(pid),
            "alive": alive(pid),
            "state": None,
        }
        if with_state:
            try:
                entry["state"] = control.query_pid(pid, {"op": "state"}, timeout=timeout)
            except (control.ControlError, OSError, ValueError) as exc:
                entry["error"] = str(exc)
        out[pid] = entry
    return out
