"""``stackfs dlmd`` (the cluster's lock manager, a service daemon) and ``stackfs mmapio`` (I/O
from an mmapped buffer), the two programs of seed 004's cluster stacks."""

from __future__ import annotations

import argparse


def cmd_dlmd(args: argparse.Namespace) -> int:
    from backends import dlmd

    return dlmd.main([])


def cmd_mmapio(args: argparse.Namespace) -> int:
    from stackfs.repro import mmapio

    return mmapio.run(args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from backends import dlmd
    from stackfs.repro import mmapio

    p = sub.add_parser(
        "dlmd",
        help="run a cluster lock manager (modelled fs/dlm) for gfs2 backend nodes",
        description=(dlmd.__doc__ or "").split("\n\n")[0] + " It runs in the foreground "
        "until SIGTERM; nodes mount with `stackfs backend mount gfs2 -o dlm=SOCKET` where "
        "SOCKET is RUN_DIR/PID/dlm.sock; `stackfs state --pid PID` shows its resources.",
    )
    p.set_defaults(func=cmd_dlmd)
    p = sub.add_parser(
        "mmapio",
        help="write (read) a file from (into) an mmap of another file",
        description="pwrite file A from a MAP_SHARED mapping of file B (or pread A into a "
        "writable one), with O_DIRECT unless --buffered, repeating after a short transfer: "
        "seed 004's workload (no standard tool does I/O from an mmapped buffer). Exit 0 when "
        "all COUNT bytes moved; the process's comm is mmapio.",
    )
    mmapio.add_arguments(p)
    p.set_defaults(func=cmd_mmapio)
