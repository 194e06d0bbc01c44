"""Slow or hung: does the thread serving a FUSE request make progress?

A task blocked on a FUSE request for longer than the threshold is not necessarily hung: the
daemon may have read the request and be working on it (a copy-up of a large file). The kernel's
hung-task detector cannot tell (it sees only the waiting task); the watchdog can, from outside,
for a request a testbed daemon serves in a worker thread (its in-flight record names the
worker's tid, :func:`stackfs.runtime.daemon.in_worker`): it samples that thread's counters

* CPU time, ``/proc/PID/task/TID/schedstat`` field 1 (``se.sum_exec_runtime``, ns);
* I/O, ``/proc/PID/task/TID/io`` (``task_io_accounting``): ``rchar``/``wchar`` (bytes through
  read/write/copy_file_range/sendfile, counted when each call returns), ``read_bytes`` (bytes
  it made the block layer read) and ``write_bytes`` (page-cache pages it dirtied);

at every look at the daemons' states and once more when a report is made, per (daemon,
request, worker), and compares. Verified on this machine's 6.18 kernel during a copy-up of a
1 GiB file through the union (a WRITE served by ``stackfs-worker``, the source dropped from
the page cache): all five counters of the worker moved between samples 0.2 s apart (state R),
some 50 MB and 0.2 s of CPU each time.

A request is *served with progress* (slow, not hung) when its worker's counters moved within
the last threshold; *stalled* when they did not move over a whole threshold (a worker idle, or
asleep on something the wait-for graph cannot see): that stays a hang; *unknown* until two
samples are far enough apart. Whether the worker itself waits on something in the graph (a
FUSE wait on a lower mount, a lock) is the graph's business: then it is no progress whatever
its counters say (:mod:`stackfs.watchdog.monitor` checks that first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from stackfs.linux import proc
from stackfs.watchdog.daemons import DaemonView

#: samples closer together than this are not compared (the counters' own granularity: rchar
#: moves once per 16 MiB copy_file_range call of a copy-up)
MIN_GAP = 0.05
_IO_FIELDS = ("rchar", "wchar", "read_bytes", "write_bytes")


@dataclass(frozen=True)
class Sample:
    """A thread's progress counters at one moment (``time``: monotonic)."""

    time: float
    cpu_ns: int
    rchar: int
    wchar: int
    read_bytes: int
    write_bytes: int

    @property
    def counters(self) -> tuple[int, ...]:
        return (self.cpu_ns, self.rchar, self.wchar, self.read_bytes, self.write_bytes)


def sample(pid: int, tid: int) -> Sample | None:
    """Thread ``tid`` of process ``pid`` now, or None if it is gone."""
    base = f"/proc/{pid}/task/{tid}"
    sched = (proc.read(base + "/schedstat", 256) or b"").split()
    io = proc.read(base + "/io", 1024)
    if len(sched) < 1 or io is None:
        return None
    fields: dict[str, int] = {}
    for line in io.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key in _IO_FIELDS and value.strip().isdigit():
            fields[key] = int(value)
    if len(fields) != len(_IO_FIELDS):
        return None
    return Sample(time.monotonic(), int(sched[0]), **fields)


@dataclass
class Evidence:
    """What two samples of a request's worker say: ``progress``, ``stalled`` or ``unknown``."""

    verdict: str
    worker: int
    daemon: int
    request: int
    #: seconds between the samples compared
    window: float = 0.0
    cpu: float = 0.0
    read: int = 0
    written: int = 0

    def render(self) -> str:
        if self.verdict == "progress":
            parts = [f"{_mb(self.written)} MB written"] if self.written else []
            if self.read:
                parts.append(f"{_mb(self.read)} MB read")
            parts.append(f"{self.cpu:.2f} s of CPU")
            return f"{', '.join(parts)} in the last {self.window:.1f} s"
        if self.verdict == "stalled":
            return f"no CPU time and no I/O in {self.window:.1f} s"
        return "not sampled long enough yet"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "worker": self.worker,
            "daemon": self.daemon,
            "request": self.request,
            "window": self.window,
            "cpu": self.cpu,
            "read": self.read,
            "written": self.written,
            "text": self.render(),
        }


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f}" if n >= 10e6 else f"{n / 1e6:.1f}"


Key = tuple[int, int, int]  # (daemon pid, request id, worker tid)


class ProgressTracker:
    """Samples of the worker threads of testbed daemons' in-flight requests, and the verdict."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.samples: dict[Key, list[Sample]] = {}

    def observe(self, views: dict[int, DaemonView]) -> None:
        """Sample the worker of every in-flight request the daemons' states name."""
        for view in views.values():
            if view.pid is None:
                continue
            for req in view.inflight():
                if req.worker is not None and req.id is not None:
                    self.take(view.pid, req.id, req.worker)
        self._prune()

    def take(self, daemon: int, rid: int, worker: int) -> Sample | None:
        s = sample(daemon, worker)
        if s is not None:
            self.samples.setdefault((daemon, rid, worker), []).append(s)
        return s

    def _prune(self) -> None:
        """Keep the samples of the last two thresholds, and the newest one before them."""
        now = time.monotonic()
        horizon = 2 * self.threshold + 1.0
        for key in list(self.samples):
            kept = self.samples[key]
            if now - kept[-1].time > horizon:
                del self.samples[key]
                continue
            old = [s for s in kept if now - s.time > horizon]
            self.samples[key] = old[-1:] + [s for s in kept if now - s.time <= horizon]

    def judge(self, daemon: int, rid: int, worker: int) -> Evidence:
        """Sample the worker now and compare with what came before."""
        ev = Evidence("unknown", worker, daemon, rid)
        now = self.take(daemon, rid, worker)
        if now is None:
            ev.verdict = "stalled"  # the worker is gone: nobody serves the request
            return ev
        earlier = [s for s in self.samples.get((daemon, rid, worker), []) if s is not now]
        earlier = [s for s in earlier if now.time - s.time >= MIN_GAP]
        if not earlier:
            return ev
        old = [s for s in earlier if now.time - s.time >= self.threshold]
        recent = [s for s in earlier if now.time - s.time < self.threshold]
        if old and old[-1].counters == now.counters:
            ev.verdict, ev.window = "stalled", now.time - old[-1].time
            return ev
        # progress within the last threshold: measured over the samples of that window (or
        # from the last one before it, when the window has none that differs)
        ref = next((s for s in recent if s.counters != now.counters), None)
        if ref is None and old:
            ref = old[-1]
        if ref is None:
            return ev  # unchanged, but not yet for a whole threshold
        ev.verdict, ev.window = "progress", now.time - ref.time
        ev.cpu = (now.cpu_ns - ref.cpu_ns) / 1e9
        ev.read = max(now.rchar - ref.rchar, now.read_bytes - ref.read_bytes)
        ev.written = max(now.wchar - ref.wchar, now.write_bytes - ref.write_bytes)
        return ev
