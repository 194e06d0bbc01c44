"""What one run owns, for a watchdog that must see only its own run (issue 24 item 2).

A run's processes are the members of its cgroup (:mod:`stackfs.runtime.cgroup`): its daemons, its
services (a lock manager, an automounter) and its workload, all put there before they exec.
That is the kernel's answer, read from ``cgroup.procs``; a mount is the run's when its daemon
is one of them, a service when its pid is. Where runs get no cgroup (see
:func:`stackfs.runtime.cgroup.unavailable`), the run id stands in: the fsname's ``RUN`` field for a
mount (``stackfs:KIND:PID:RUN``, shown by the kernel in mountinfo) and the ``run_id`` a
service recorded in its run directory.

``stackfs watch`` without ``--run`` has no scope and watches everything (foreign filesystems
included); the repro runner, the demo and the pytest plugin give their watchdog their stack's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stackfs.linux.proc import alive
from stackfs.runtime import cgroup, mountinfo
from stackfs.runtime.mountinfo import MountEntry
from stackfs.watchdog.procscan import TaskInfo


@dataclass
class RunScope:
    """The run ``run_id``; ``cgroup``: its cgroup (a stack's or the whole run's), None where
    there is none."""

    run_id: str
    cgroup: Path | None = None

    @classmethod
    def of_run(cls, run_id: str) -> RunScope:
        """The whole run ``run_id`` (every stack of it), for ``stackfs watch --run``."""
        return cls(run_id, cgroup.run_path(run_id))

    @property
    def label(self) -> str:
        return mountinfo.run_label(self.run_id)

    def pids(self) -> set[int] | None:
        """The run's processes now (None: no cgroup, decide by run id)."""
        return cgroup.pids_under(self.cgroup) if self.cgroup is not None else None

    def owns_mount(self, e: MountEntry, pids: set[int] | None) -> bool:
        if pids is not None and e.daemon_pid in pids:
            return True
        if e.run_label != self.label:
            return False
        # no cgroup, or a mount of the run whose daemon is gone (and with it from the cgroup)
        return pids is None or e.daemon_pid is None or not alive(e.daemon_pid)

    def owns_service(self, pid: int, run_id: str | None, pids: set[int] | None) -> bool:
        """Whether service ``pid`` (of run ``run_id``, its ``info.json``'s) is the run's."""
        if pids is not None:
            return pid in pids
        return run_id == self.run_id

    def tasks(
        self, tasks: dict[int, TaskInfo], pids: set[int] | None, conns: Iterable[int]
    ) -> dict[int, TaskInfo]:
        """The run's tasks of ``tasks``: its processes', and any waiting on one of its
        connections ``conns`` (someone touching the run's mount is part of its story);
        without a cgroup, every task but those waiting on another run's testbed mount."""
        own = set(conns)
        if pids is not None:
            return {tid: t for tid, t in tasks.items() if t.pid in pids or t.conn in own}
        foreign = {
            e.conn
            for e in mountinfo.testbed_mounts()
            if e.conn not in own and e.run_label != self.label
        }
        return {tid: t for tid, t in tasks.items() if t.conn not in foreign}
