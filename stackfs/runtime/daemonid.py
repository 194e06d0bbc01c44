"""Is process PID the testbed daemon it is said to be? Asked before root signals it.

A pid comes from a mount's fsname (``stackfs:KIND:PID``, which whoever mounts chooses) or from a
run directory (``RUN_DIR/PID/info.json``); neither is proof. The proof is the process itself:

* a mount daemon holds ``/dev/fuse`` open for the mount's FUSE connection: its fdinfo says
  ``fuse_connection: N`` (``fuse_dev_show_fdinfo``; 6.18 shows it). On a kernel that does not
  say (Debian 12's 6.1), it must hold some ``/dev/fuse`` and be the same process as the
  service case below;
* a service daemon (no mount: ``stackfs dlmd``, an automounter) is the process that wrote its
  run directory: the same ``starttime`` (clock ticks since boot, ``/proc/PID/stat``; a reused
  pid has a later one), the same command line, and it listens on the control socket in that
  directory (``/proc/net/unix`` and its fds, through psutil).

The run directory's file is only read when :mod:`stackfs.runtime.rundir` trusts it (root's, in a
directory only root can write). A mismatch is never signalled; the caller reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from stackfs.linux import proc
from stackfs.runtime import control


@dataclass(frozen=True)
class Proof:
    """Whether ``pid`` is the daemon, and the evidence (or the mismatch) in words. ``stale``: the
    run directory's process is gone and ``pid`` is another process (the pid was reused)."""

    ok: bool
    why: str
    stale: bool = False


def _same_start(pid: int, info: dict[str, Any]) -> Proof | None:
    """A mismatch of start time (a reused pid), or None."""
    want = info.get("start_ticks")
    have = proc.start_ticks(pid)
    if want is not None and have is not None and have != want:
        return Proof(False, f"started at tick {have}, its run directory's at {want}", stale=True)
    return None


def _same_process(pid: int, info: dict[str, Any] | None) -> Proof:
    """The process that wrote ``info``: start time, command line, its control socket."""
    if not info:
        return Proof(False, "no trusted run directory to compare with")
    if info.get("start_ticks") is None:
        return Proof(False, "its run directory records no start time")
    bad = _same_start(pid, info)
    if bad is not None:
        return bad
    try:
        p = psutil.Process(pid)
        cmdline = p.cmdline()
        sockets = {c.laddr for c in p.net_connections(kind="unix")}
    except psutil.Error as exc:
        return Proof(False, f"cannot be read ({type(exc).__name__})")
    if cmdline != info.get("cmdline"):
        return Proof(False, "its command line is not the one its run directory records")
    sock = str(control.socket_path_for_pid(pid))
    if sock not in sockets:
        return Proof(False, f"it does not hold {sock}")
    return Proof(True, "start time, command line and control socket match")


def of_mount(pid: int, conn: int | None, info: dict[str, Any] | None = None) -> Proof:
    """Is ``pid`` the daemon of FUSE connection ``conn`` (``info``: its trusted run directory)?"""
    if info:
        bad = _same_start(pid, info)
        if bad is not None:
            return bad
    conns = proc.fuse_connections(pid)
    if not conns:
        return Proof(False, "it holds no /dev/fuse")
    shown = [c for c in conns if c is not None]
    if shown and conn is not None:
        if conn in shown:
            return Proof(True, f"its /dev/fuse serves connection {conn}")
        return Proof(False, f"its /dev/fuse serves connection {shown}, not {conn}")
    # the kernel does not say which connection (6.1), or the connection is not known
    same = _same_process(pid, info)
    if not same.ok:
        return same
    return Proof(True, f"it holds /dev/fuse; {same.why}")


def of_service(pid: int, info: dict[str, Any] | None) -> Proof:
    """Is ``pid`` the service daemon (no mount) that wrote ``info``?"""
    return _same_process(pid, info)


def of_info(pid: int, info: dict[str, Any]) -> Proof:
    """Is ``pid`` the daemon its (trusted) run directory ``info`` describes?"""
    if info.get("mountpoint") is None:
        return of_service(pid, info)
    conn = info.get("conn")
    return of_mount(pid, conn if isinstance(conn, int) else None, info)
