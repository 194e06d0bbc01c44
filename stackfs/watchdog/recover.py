"""Recovery: abort exactly the FUSE connections involved, detach, reap, and check it worked.

1. abort each connection through the control filesystem (``/sys/fs/fuse/connections/N/abort``,
   shared/NOTES.md): every waiting request fails (the caller gets ECONNABORTED, a helper
   ENOTCONN), which also releases the kernel locks the callers held;
2. detach each of their mounts lazily (``umount2(MNT_DETACH)``, ``umount -l``);
3. reap the testbed daemons serving them: wait a short grace for the daemon to exit on its own
   (a pyfuse3 daemon usually does once its connection is aborted), then SIGTERM, then SIGKILL.
   A foreign daemon (not ``stackfs:KIND:PID``) is not signalled unless asked: after the abort
   it gets ENODEV and it is its own business to exit;
4. verify, until a deadline: no task of the findings left in D or in a FUSE wait, no task at all
   waiting on those connections, none of those mounts left, none of those testbed daemons alive.

This mirrors :func:`stackfs.runtime.lifecycle.unmount` with the order changed (every connection is
aborted before any mount is touched, so the layers of a stack release each other) and a short
grace before signals: a daemon whose handler never returns survives both the abort and SIGTERM
(its trio task is still running), and the lifecycle's 1 s + 1 s grace would dominate recovery.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stackfs.runtime import fusectl, lifecycle, mountinfo, rundir
from stackfs.watchdog import daemons, procscan


@dataclass
class Recovery:
    """What recovery did and what it found afterwards."""

    conns: list[int]
    mounts: list[str] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    daemons: list[int] = field(default_factory=list)
    foreign_daemons: list[int] = field(default_factory=list)
    signalled: dict[int, str] = field(default_factory=dict)
    still_blocked: list[dict[str, Any]] = field(default_factory=list)
    still_mounted: list[str] = field(default_factory=list)
    daemons_alive: list[int] = field(default_factory=list)
    seconds: float = 0.0
    #: seconds until the connections were aborted, the mounts detached, the daemons gone
    steps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.still_blocked or self.still_mounted or self.daemons_alive)

    def render(self) -> list[str]:
        daemons = ", ".join(f"{p} ({self.signalled.get(p, 'exited')})" for p in self.daemons)
        out = [
            f"recovery: {'complete' if self.ok else 'INCOMPLETE'} in {self.seconds:.3f} s: "
            f"aborted connection{'s' if len(self.aborted) != 1 else ''} "
            f"{', '.join(map(str, self.aborted)) or '-'}; detached "
            f"{', '.join(self.detached) or '-'}; daemons {daemons or '-'}"
        ]
        if self.steps:
            out.append("  " + ", ".join(f"{k} at {v:.3f} s" for k, v in self.steps.items()))
        if self.foreign_daemons:
            out.append(f"  foreign daemons (not signalled): {self.foreign_daemons}")
        if self.still_blocked:
            out.append(
                "  still blocked: "
                + ", ".join(
                    f"{t['comm']}/{t['tid']} ({t['state']} {t['wchan']})"
                    for t in self.still_blocked
                )
            )
        if self.still_mounted:
            out.append(f"  still mounted: {', '.join(self.still_mounted)}")
        if self.daemons_alive:
            out.append(f"  daemons still alive: {self.daemons_alive}")
        out.extend(f"  note: {n}" for n in self.notes)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _wait_dead(pids: list[int], deadline: float) -> list[int]:
    while True:
        left = [p for p in pids if daemons.alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.005)


def recover_connections(
    conns: Iterable[int],
    tids: Iterable[int] = (),
    *,
    scanner: procscan.Scanner | None = None,
    grace: float = 0.3,
    verify_timeout: float = 3.0,
    kill_foreign: bool = False,
    mountpoints: dict[int, str] | None = None,
) -> Recovery:
    """Abort ``conns``, detach their mounts, reap their testbed daemons, verify (see module).

    ``mountpoints`` (conn -> mount point, as seen when the finding was made) guards against a
    connection number that was reused by another mount since: such a connection is not touched.
    """
    t0 = time.monotonic()
    conns = sorted(set(conns))
    tids = sorted(set(tids))
    rec = Recovery(conns)
    scanner = scanner or procscan.Scanner()
    if not fusectl.ensure_mounted():
        rec.notes.append("the FUSE control filesystem is not available: cannot abort")
    entries = [e for e in mountinfo.mounts() if e.is_fuse and e.conn in conns]
    if mountpoints:
        for c in list(conns):
            want = mountpoints.get(c)
            mine = [e for e in entries if e.conn == c]
            if want is not None and mine and not any(e.mountpoint == want for e in mine):
                entries = [e for e in entries if e.conn != c]
                conns.remove(c)
                rec.notes.append(
                    f"connection {c} now serves {mine[0].mountpoint}, not {want}: "
                    "its mount went away and the number was reused; not touched"
                )
    for c in list(conns):
        if not any(e.conn == c for e in entries) and not fusectl.waiting(c):
            conns.remove(c)  # gone and idle: its number may be handed out again any moment
            rec.notes.append(f"connection {c} is gone or idle and has no mount: not touched")
    rec.conns = conns
    rec.mounts = [e.mountpoint for e in entries]
    testbed: dict[int, str] = {}
    for e in entries:
        if e.daemon_pid is not None and lifecycle.is_testbed_daemon(e.daemon_pid, e.mountpoint):
            testbed[e.daemon_pid] = e.mountpoint
    foreign_conns = [c for c in conns if not any(e.conn == c and e.daemon_pid for e in entries)]
    if foreign_conns:
        holders = daemons.fuse_daemons()
        for c in foreign_conns:
            rec.foreign_daemons.extend(p for p in holders.get(c, []) if p not in testbed)
    rec.daemons = sorted(testbed)

    # 1. abort every connection first
    for c in conns:
        if fusectl.abort(c):
            rec.aborted.append(c)
    rec.steps["aborted"] = time.monotonic() - t0
    # 2. detach, topmost first
    for e in reversed(entries):
        if lifecycle.lazy_detach(e.mountpoint):
            rec.detached.append(e.mountpoint)
    rec.steps["detached"] = time.monotonic() - t0
    # 3. reap
    victims = list(testbed) + (rec.foreign_daemons if kill_foreign else [])
    left = _wait_dead(victims, time.monotonic() + grace)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not left:
            break
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            rec.signalled[p] = sig.name
        left = _wait_dead(left, time.monotonic() + wait)
    for p, how in rec.signalled.items():
        if how == "SIGKILL" and not daemons.alive(p):
            rundir.remove(p)  # a killed daemon cannot remove its own run directory
    rec.steps["reaped"] = time.monotonic() - t0
    # 4. verify
    deadline = time.monotonic() + verify_timeout
    while True:
        rec.still_blocked = [t.to_json() for t in scanner.still_blocked(tids)]
        # a connection number is reused as soon as its mount is gone (another test's mount
        # may get it within milliseconds): match mounts and tasks by mount point too
        ours = {(e.mount_id, e.mountpoint, e.conn) for e in entries}
        for t in scanner.scan().values():
            if t.conn in conns and t.tid not in tids and t.mountpoint in rec.mounts:
                rec.still_blocked.append(t.to_json())
        rec.still_mounted = [
            e.mountpoint for e in mountinfo.mounts() if (e.mount_id, e.mountpoint, e.conn) in ours
        ]
        rec.daemons_alive = [p for p in victims if daemons.alive(p)]
        if rec.ok or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    rec.seconds = time.monotonic() - t0
    rec.steps["verified"] = rec.seconds
    return rec
