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
from dataclasses import dataclass, field
from typing import Any

from stackfs.kernel import snapshot
from stackfs.kernel.snapshot import DlmSnap, KernelSnapshot, RequestSnap
from stackfs.linux import proc
from stackfs.linux.proc import alive, comm_of
from stackfs.runtime import control
from stackfs.runtime.mountinfo import MountEntry

__all__ = [
    "DaemonView",
    "ServiceView",
    "alive",
    "comm_of",
    "fuse_daemons",
    "query_daemons",
    "services",
]


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
    _parsed: tuple[object, KernelSnapshot] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def snapshot(self) -> KernelSnapshot:
        """:attr:`state`, typed (:mod:`stackfs.kernel.snapshot`): parsed once per answer;
        empty when there is none."""
        if self._parsed is None or self._parsed[0] is not self.state:
            self._parsed = (self.state, snapshot.parse(self.state))
        return self._parsed[1]

    def inflight(self) -> list[RequestSnap]:
        return list(self.snapshot.inflight)

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


@dataclass
class ServiceView:
    """A testbed service daemon (no mount: a lock manager, an automounter), and its state."""

    pid: int
    kind: str | None
    run_id: str | None
    comm: str | None
    alive: bool
    state: dict[str, Any] | None = None
    error: str | None = None
    _dlm: tuple[object, DlmSnap] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dlm(self) -> DlmSnap:
        """A lock manager's :attr:`state`, typed (empty for another service); parsed once."""
        if self._dlm is None or self._dlm[0] is not self.state:
            self._dlm = (self.state, DlmSnap.parse(self.state))
        return self._dlm[1]


def services(with_state: bool = True, timeout: float = 1.0) -> dict[int, ServiceView]:
    """pid -> a testbed service daemon (no mount: the lock manager ``stackfs dlmd``, an
    automounter), found by its run directory (``info.json`` with ``"mountpoint": null``, see
    :mod:`stackfs.runtime.service`), with its ``state`` read over its control socket."""
    from stackfs.runtime import service

    out: dict[int, ServiceView] = {}
    for pid, info in service.running().items():
        kind, run_id = info.get("kind"), info.get("run_id")
        view = ServiceView(
            pid,
            kind if isinstance(kind, str) else None,
            run_id if isinstance(run_id, str) else None,
            comm_of(pid),
            alive(pid),
        )
        if with_state:
            try:
                view.state = control.query_pid(pid, {"op": "state"}, timeout=timeout)
            except (control.ControlError, OSError, ValueError) as exc:
                view.error = str(exc)
        out[pid] = view
    return out
