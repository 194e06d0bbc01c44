"""``stackfs watch``: watch live FUSE mounts (any FUSE filesystem) and report what hangs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from stackfs.cli import CLIError
from stackfs.watchdog.detect import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from stackfs.watchdog.report import Report


def _to_kmsg(args: argparse.Namespace, report: Report) -> None:
    """--kmsg: the report's findings into the kernel log, in the kernel's formats."""
    if not getattr(args, "kmsg", False) or not report.found:
        return
    from stackfs.watchdog import kmsg

    try:
        kmsg.write_report(report.to_json())
    except kmsg.KmsgError as exc:
        print(f"stackfs watch: --kmsg: {exc}", file=sys.stderr)


def cmd_watch(args: argparse.Namespace) -> int:
    from stackfs.runtime import mountinfo
    from stackfs.watchdog.monitor import Watchdog
    from stackfs.watchdog.scope import RunScope

    if os.geteuid() != 0:
        print(
            "stackfs watch: not root: kernel stacks and other users' tasks are not readable",
            file=sys.stderr,
        )
    fuse = {m.mountpoint for m in mountinfo.fuse_mounts()}
    for mp in args.mountpoints:
        if os.path.abspath(mp) not in fuse:
            raise CLIError(f"{mp}: not a FUSE mount point")
    if args.threshold <= 0:
        raise CLIError("--threshold must be positive")
    wd = Watchdog(
        args.mountpoints or None,
        args.threshold,
        abort=args.abort,
        report_dir=args.report_dir,
        json_file=args.json,
        picture=not args.no_picture,
        since=0.0 if args.once else None,
        scope=RunScope.of_run(args.run) if args.run else None,
    )
    if not wd.fusectl_ok:
        print(
            "stackfs watch: the FUSE control filesystem is not mounted and could not be: "
            "no waiting counts, no abort",
            file=sys.stderr,
        )
    if args.once:
        report = wd.check()
        print(report.text())
        _to_kmsg(args, report)
        return 1 if report.found else 0
    if not args.quiet:
        names = ", ".join(e.mountpoint for e in wd.watched()) or "none yet"
        print(
            f"stackfs watch: watching {len(wd.watched())} FUSE mount(s) ({names}), "
            f"threshold {args.threshold:g} s{', abort on hang' if args.abort else ''}",
            file=sys.stderr,
            flush=True,
        )
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    found = 0
    while True:
        polled = wd.poll()
        if polled is not None:
            # a slow-work report (verdict "slow") is printed, but it is no finding: not
            # counted, not in the kernel log, never aborted
            found += polled.found
            print(polled.text(), flush=True)
            print(flush=True)
            _to_kmsg(args, polled)
            if args.count and found >= args.count:
                break
        if wd.gone():
            if not args.quiet:
                print("stackfs watch: no watched mount is left", file=sys.stderr)
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(wd.interval)
    return 1 if found else 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "watch",
        help="watch FUSE mounts, report hung tasks with the kernel's words, optionally recover",
        description="Watch live FUSE mounts (any FUSE filesystem; with no MOUNTPOINT, every FUSE "
        "mount, also ones mounted later) and print a report when a task has been blocked in a "
        "FUSE wait or in state D for longer than the threshold: the kernel's hung-task message "
        "with the /proc stack, the connection and daemon it waits on, the daemon's requests "
        "in flight and modelled locks (testbed mounts), the wait-for graph and its cycle as a "
        "lockdep-style scenario. Modelled oopses and lockdep events of testbed daemons are "
        "reported too. --abort then aborts the connections involved, detaches the mounts and "
        "reaps the daemons; a task whose request the daemon is serving with progress (CPU "
        "time, I/O of its worker thread) is reported as slow, not hung, and never aborted. It "
        "never touches a watched mount through the VFS. Exit status: 0 when nothing was "
        "reported (or only slow work), 1 when something was.",
    )
    p.add_argument("mountpoints", metavar="MOUNTPOINT", nargs="*")
    p.add_argument(
        "--run",
        metavar="ID",
        help="only the run ID's tasks, mounts, daemons and services (its cgroup, else its run "
        "id in the mounts' fsname); without it, everything on the machine",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="S",
        help="seconds without progress before a task counts as hung (default 1)",
    )
    p.add_argument(
        "--abort",
        action="store_true",
        help="recover: abort the connections involved, detach, reap the daemons",
    )
    p.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write report.txt, report.json and waitgraph.svg/.png here",
    )
    p.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    p.add_argument(
        "--once",
        action="store_true",
        help="look once and report what hangs now (exit 1 if something does)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N reports (default: keep watching)",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="stop watching after S seconds")
    p.add_argument("--no-picture", action="store_true", help="do not run graphviz")
    p.add_argument(
        "--kmsg",
        action="store_true",
        help="also write each finding to /dev/kmsg (dmesg) in the kernel's own "
        "formats, every line tagged stackfs[PID] (observed) or stackfs-model[PID] "
        "(modelled), so that fstests-style dmesg checks see it",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_watch)
