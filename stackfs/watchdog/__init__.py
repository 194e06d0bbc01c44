"""The watchdog: detect hangs and races on FUSE mounts, explain them like the kernel, recover.

Modules, one job each:

* :mod:`~stackfs.watchdog.procscan` reads /proc (state, wchan, stack, syscall of every thread;
  the FUSE connection a task waits on);
* :mod:`~stackfs.watchdog.daemons` finds the daemon of each FUSE connection (and helper daemons
  that serve no mount) and reads the testbed daemons' states over their control sockets;
* :mod:`~stackfs.watchdog.kernlocks` infers real i_rwsem waits and holds from kernel stacks;
* :mod:`~stackfs.watchdog.graph` joins all of it into the wait-for graph and names its cycles;
* :mod:`~stackfs.watchdog.detect` decides what is a finding (hung task, modelled event, workload
  error); :mod:`~stackfs.watchdog.progress` tells a slow request from a hung one (the serving
  worker thread's CPU time and I/O);
* :mod:`~stackfs.watchdog.report` writes the kernel-style text, the JSON and the picture
  (paths escaped by :mod:`~stackfs.watchdog.escape`);
* :mod:`~stackfs.watchdog.picture` draws the wait-for graph (DOT, SVG, PNG; a cycle reads top to
  bottom);
* :mod:`~stackfs.watchdog.kernfmt` renders a report as kernel log records, line for line in the
  kernel's formats; :mod:`~stackfs.watchdog.kmsg` writes them to /dev/kmsg (``--kmsg``);
* :mod:`~stackfs.watchdog.recover` aborts the connections involved, detaches, reaps, verifies;
* :mod:`~stackfs.watchdog.monitor` is the loop (:class:`Watchdog`); :mod:`~stackfs.watchdog.cli`
  is ``stackfs watch``.

API for reproducers and tests::

    from stackfs.watchdog import Watchdog

    wd = Watchdog(mounts=[union_mp, backend_mp], threshold=1.0, report_dir=out_dir)
    proc = subprocess.Popen(["mv", src, dst])                 # the workload
    report = wd.run(timeout=10, stop=lambda: proc.poll() is not None)
    # report.verdict: "deadlock" | "hang" | "oops" | "recursive_locking" | "lock_inversion"
    #                 | "error" | "slow" | "ok"
    # report.hangs (Hang: task, blocked_for, request, daemon; the tasks over the threshold),
    # report.slow (Hang with .progress: served with progress, not hung; run() goes on past a
    # "slow" report, --abort never acts on one),
    # report.also_blocked (the rest of the graph's blocked tasks), report.cycle (Cycle: kind
    # "fuse_reentry" | "recursive_locking" | "lock_inversion", title, summary, tasks,
    # segments), report.events (ModelEvent: type, event dict), report.errors, report.graph,
    # report.timing["latency"], report.recovery, report.text(), report.to_json(),
    # report.write(dir) -> {"text", "json", "dot", "svg", "png"}
    if report.found:
        rec = wd.recover(report)        # or Watchdog(..., abort=True) to recover at once
        assert rec.ok                   # nothing blocked, mounted or alive any more
    wd.workload_error(pid, "cat", "open", path, errno.ESTALE, expected="success")
    # -> the next poll()/run() returns a report with verdict "error" (or includes it)

    report = await wd.run_async(timeout=10)       # the same from trio code
    report = wd.check()                           # one look now; verdict "ok" if nothing

``Watchdog.poll()`` is one step (returns a report or None) for callers with their own loop.
Only events newer than the watchdog's creation count (``since=`` to change that). A modelled
event is reported after ``event_settle`` seconds (threshold + 0.3 s by default), so the hang
it causes is in the same report; an oops after at most 0.3 s.
"""

from stackfs.watchdog.detect import Hang, ModelEvent, WorkloadError
from stackfs.watchdog.graph import Cycle, WaitGraph
from stackfs.watchdog.monitor import Watchdog
from stackfs.watchdog.recover import Recovery
from stackfs.watchdog.report import Report

__all__ = [
    "Cycle",
    "Hang",
    "ModelEvent",
    "Recovery",
    "Report",
    "WaitGraph",
    "Watchdog",
    "WorkloadError",
]
