"""The scheduler of one run, in the runner process, reached by every daemon over a unix socket.

:class:`RunScheduler` wraps a :class:`stackfs.kernel.sched.Scheduler`:

* it listens on ``DIR/sched.sock`` (DIR a fresh root-owned 0700 directory) and puts every
  declared injection point of every layer of the run under ``sched:DIR/sched.sock`` through the
  control socket's ``inject`` op (:meth:`attach`); a daemon's scheduled point then sends an
  arrival (:mod:`stackfs.kernel.schedpoint`) and waits for the answer;
* it names the arriving task by its role, never its pid (:meth:`resolve`): the workload
  process it is, or works for (a daemon's worker thread is followed to the request it serves
  through that daemon's ``inflight`` list, as the watchdog follows it), as ``wI.COMM``; a
  helper process a daemon started (the autofs backend's automount daemon) as ``ROLE.COMM``; a
  server action of another client (natural mode's :meth:`Scenario.concurrent`) is a task of
  its own, ``sI.ROLE-ACTION``, that waits at the pseudo-point ``server`` until the scheduler
  lets it act, and each workload process waits at ``start`` (a gate before its exec) until
  the scheduler lets it start (:meth:`actor`);
* it decides when the run is quiescent (:meth:`quiescent`): the workload has started, every
  server action is waiting or done, every released task has been told (its go delivered), and
  no thread of a workload process (or of its children) or of a daemon of the run is running
  (``R`` in ``/proc/PID/task/TID/stat``) on three samples in a row, all taken after the last
  arrival or release; the scheduler's settle bound is the fallback, recorded in the decision.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

from stackfs.kernel.sched import DEFAULT_REPLAY_WAIT, Schedule, Scheduler, Strategy
from stackfs.linux.proc import comm_of, descendants, tgid_of, thread_states
from stackfs.runtime import control
from stackfs.runtime.service import timeout_factor

#: samples in a row with nothing running before the run counts as quiescent
QUIET_SAMPLES = 3
#: the settle bound of a run: decide anyway after this long without an arrival or a release
#: (well below the hung-task threshold: a task the scheduler holds must not look hung)
RUN_SETTLE = 0.25
#: how long an arrival's task may take to be recognised (a workload process that reached a
#: point before the runner recorded its pid)
RESOLVE_WAIT = 0.3


class RunScheduler:
    """See the module docstring. Use as a context manager: the socket and its directory are
    removed, and every held task released, on exit."""

    def __init__(
        self,
        strategy: Strategy,
        daemons: dict[int, str],
        *,
        settle: float = RUN_SETTLE,
        replay_wait: float = DEFAULT_REPLAY_WAIT,
    ) -> None:
        # a slower machine (a VM under software emulation: $STACKFS_TIMEOUT_FACTOR) waits longer
        # for a recorded label to arrive and for the run to settle, as its start-ups do
        factor = timeout_factor()
        self.sched = Scheduler(strategy, settle=settle * factor, replay_wait=replay_wait * factor)
        #: daemon pid -> layer role
        self.daemons = dict(daemons)
        self.dir = Path(tempfile.mkdtemp(prefix="stackfs-sched-"))
        self.path = self.dir / "sched.sock"
        self._workload: dict[int, str] | None = None
        self._actors: dict[str, bool] = {}
        self._quiet = 0
        self._moves = -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.attached: list[str] = []
        self.notes: list[str] = []

    # -- life ------------------------------------------------------------------------------------

    def __enter__(self) -> RunScheduler:
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self._spawn(self._accept)
        self._spawn(self.sched.drive, self.quiescent, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> Schedule:
        """Release every held task, stop, remove the socket; the schedule of the run."""
        self.sched.close()
        self._stop.set()
        for t in self._threads:
            t.join(5.0)
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.sched.schedule()

    def _spawn(self, fn: Callable[..., object], *args: object) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, daemon=True, name="stackfs-sched")
        t.start()
        self._threads = [th for th in self._threads if th.is_alive()] + [t]
        return t

    @property
    def action(self) -> str:
        """The injection action that puts a point under this scheduler."""
        return f"sched:{self.path}"

    def attach(self, mountpoints: Iterable[str], services: Iterable[int] = ()) -> list[str]:
        """Put every declared point of the daemons serving ``mountpoints``, and of the service
        daemons ``services`` (pids: the lock manager), under the scheduler (the control
        socket's ``inject`` op, as ``stackfs inject``); the ``ROLE:POINT``s."""
        targets: list[Callable[[dict[str, object]], dict]] = [
            functools.partial(control.query, mp) for mp in mountpoints
        ]
        targets += [functools.partial(control.query_pid, pid) for pid in services]
        for query in targets:
            state = query({"op": "state"})
            role = self.daemons.get(int(state["daemon"]["pid"]), "?")
            for p in state.get("inject") or []:
                query({"op": "inject", "point": p["point"], "action": self.action})
                self.attached.append(f"{role}:{p['point']}")
        return self.attached

    # -- the workload --------------------------------------------------------------------------

    def set_workload(self, procs: Sequence[tuple[int, str]]) -> None:
        """The workload has started: (pid, comm) of each process, in the scenario's order."""
        self._workload = {pid: f"w{i}.{comm}" for i, (pid, comm) in enumerate(procs)}
        self.sched.left()

    def actor(self, task: str, point: str, act: Callable[[], str]) -> threading.Thread:
        """A step the runner takes as a scheduled task: it waits at ``point`` until the
        scheduler lets it go, then acts; its note goes to :attr:`notes`. Another client's
        server action (``sI.ROLE-ACTION@server``), a workload process's exec
        (``wI.COMM@start``)."""
        self._actors[task] = False

        def run() -> None:
            ticket = self.sched.arrive(task, point)
            while not ticket.go.wait(0.05):
                if self._stop.is_set():
                    return
            # taken: from here until it has acted, quiescent() counts it as running (an
            # action may itself reach a scheduled point: the settle bound stays the fallback)
            self.sched.taken(ticket)
            try:
                self.notes.append(f"{ticket.label}: {act()}")
            except Exception as exc:  # noqa: BLE001 - the run's problem, said in its notes
                self.notes.append(f"{ticket.label}: failed: {exc}")
            finally:
                self._actors[task] = True
                self.sched.left()

        return self._spawn(run)

    # -- quiescence ----------------------------------------------------------------------------

    def _running(self) -> bool:
        """Whether any thread of the workload (children included, read afresh on every
        sample: :func:`descendants` reads only the tree) or of a daemon runs."""
        assert self._workload is not None
        pids = set(self._workload) | set(self.daemons)
        for pid in list(self._workload):
            pids |= descendants(pid)
        return any("R" in thread_states(pid).values() for pid in pids)

    def quiescent(self, waiting: Sequence[str]) -> bool:
        if self._workload is None:
            return False
        if self.sched.moves != self._moves:  # count the quiet samples after the last move
            self._moves, self._quiet = self.sched.moves, 0
        held = {w.partition("@")[0] for w in waiting}
        if any(not done and task not in held for task, done in self._actors.items()):
            self._quiet = 0
            return False
        self._quiet = 0 if self._running() else self._quiet + 1
        return self._quiet >= QUIET_SAMPLES

    # -- arrivals ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            buf = b""
            try:
                while b"\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                arrival = json.loads(buf.split(b"\n", 1)[0])
                daemon = int(arrival["daemon"])
                point = f"{self.daemons.get(daemon, 'pid' + str(daemon))}:{arrival['point']}"
                task = self.resolve(int(arrival["tid"]), str(arrival.get("comm", "?")))
            except (OSError, ValueError, KeyError, TypeError):
                return
            ticket = self.sched.arrive(task, point)
            try:
                conn.setblocking(False)
                while not ticket.go.wait(0.05):
                    if self._stop.is_set():
                        break
                    if _peer_gone(conn):  # the daemon's task was cancelled, or it died
                        self.sched.withdraw(ticket)
                        return
                with contextlib.suppress(OSError):
                    conn.setblocking(True)
                    conn.sendall(b'{"go": true}\n')
            finally:
                # delivered (the daemon's thread woken by it: running), or nobody to tell
                self.sched.taken(ticket)

    def resolve(self, tid: int, comm: str) -> str:
        """The stable name of task ``tid`` (see the module docstring)."""
        deadline = time.monotonic() + RESOLVE_WAIT
        while True:
            name = self._resolve(tid, 0)
            if name is not None:
                return name
            if time.monotonic() >= deadline:
                return f"x.{comm}"
            time.sleep(0.005)

    def _resolve(self, tid: int, depth: int) -> str | None:
        tgid = tgid_of(tid)
        if tgid is None:
            return None
        work = self._workload or {}
        pid = tgid
        for _ in range(8):
            if pid in work:
                return work[pid]
            if pid != tgid and pid in self.daemons:
                # a helper a daemon of the run started (the autofs backend's automountd)
                return f"{self.daemons[pid]}.{comm_of(tgid) or 'helper'}"
            try:
                pid = psutil.Process(pid).ppid()
            except psutil.Error:
                break
            if pid <= 1:
                break
        role = self.daemons.get(tgid)
        if role is None or depth > 4:
            return None
        try:
            state = control.query_pid(tgid, {"op": "state"}, timeout=2.0)
        except control.ControlError:
            return None
        for req in state.get("inflight") or []:
            if (req.get("worker") or {}).get("tid") == tid and req.get("task"):
                return self._resolve(int(req["task"]["pid"]), depth + 1)
        return f"{role}.daemon"


def _peer_gone(conn: socket.socket) -> bool:
    """Whether the other end of ``conn`` (non-blocking) closed it."""
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
