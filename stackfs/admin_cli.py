"""The administrative subcommands, for any layer: ``state``, ``inject`` and ``server`` ask a
running daemon over its control socket (they work while its mount is wedged), ``cleanup``
recovers what a run left behind, ``testfs`` mounts a test filesystem.

(Each part's own subcommands live in its ``cli.py``: ``stackfs.union.cli``, ``backends.cli``,
``stackfs.watchdog.cli``, ``stackfs.repro.cli``; :mod:`stackfs.cli` is the ``stackfs`` entry
point that gathers them.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import backends
from stackfs.cli import CLIError
from stackfs.runtime import control, lifecycle


def _query(mountpoint: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    try:
        return control.query(mountpoint, request, timeout=timeout)
    except control.ControlError as exc:
        raise CLIError(str(exc)) from exc


def cmd_state(args: argparse.Namespace) -> int:
    if args.pid is not None:  # a service daemon (no mount): the lock manager, an automounter
        try:
            state = control.query_pid(args.pid, {"op": "state"})
        except control.ControlError as exc:
            raise CLIError(str(exc)) from exc
    elif args.mountpoint is None:
        raise CLIError("state needs a MOUNTPOINT or --pid PID", 2)
    else:
        state = _query(args.mountpoint, {"op": "state"})
    json.dump(state, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    reply = _query(args.mountpoint, {"op": "inject", "point": args.point, "action": args.action})
    for p in reply.get("inject", []):
        if p.get("point") == args.point:
            print(f"{args.point}: {p.get('action')}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """Another client changes the server (the store) behind the mount's back."""
    request: dict[str, Any] = {"op": "server", "action": args.action, "args": args.args}
    try:
        reply = control.query(args.mountpoint, request)
    except control.ControlError as exc:  # the daemon's answer names the operation and path
        text = str(exc)
        raise CLIError(text if args.mountpoint in text else f"{args.mountpoint}: {text}") from exc
    if reply.get("message"):
        print(reply["message"])
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from stackfs.runtime.rundir import RunDirError

    owner = lifecycle.Owner(run_id=args.run_id, mine=args.mine, everything=args.all)
    try:
        actions = lifecycle.cleanup(owner=owner, dry_run=args.dry_run)
    except RunDirError as exc:
        raise CLIError(str(exc)) from None
    for a in actions:
        print(a.render())
    if not actions and not args.quiet:
        print("nothing to clean up" + ("" if args.all else " (of yours, or dead; --all: any)"))
    return 1 if any(a.refused for a in actions) else 0


def cmd_testfs(args: argparse.Namespace) -> int:
    from stackfs import testfs

    return testfs.main(args.name, Path(args.mountpoint), args.debug)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "state",
        help="print a testbed daemon's modelled kernel state as JSON",
        description="Print the modelled kernel state (locks with holders and waiters, lock "
        "order, oopses, injection points, requests in flight) of the daemon serving "
        "MOUNTPOINT. It is read over the daemon's control socket, so it works while the "
        "mount itself is wedged. --pid PID asks a service daemon that has no mount (the "
        "lock manager of a cluster, backends.dlmd: its resources, granted modes per node, "
        "queued requests, blocking ASTs).",
    )
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--pid", type=int, help="a service daemon's pid (RUN_DIR/PID/control.sock)")
    p.set_defaults(func=cmd_state)

    p = sub.add_parser(
        "inject",
        help="set an injection point on a mounted testbed daemon",
        description="Set injection point POINT of the daemon serving MOUNTPOINT. ACTION is "
        "delay:SECONDS, barrier:N[:TIMEOUT] (hold the first N arrivals until all N are "
        "there), error:ERRNAME (e.g. error:EIO) or off. `stackfs state MOUNTPOINT` lists "
        "the points.",
    )
    p.add_argument("mountpoint")
    p.add_argument("point")
    p.add_argument("action")
    p.set_defaults(func=cmd_inject)

    p = sub.add_parser(
        "server",
        help="change a backend's server behind the client's back (another client)",
        description="Act as another client of the server (store) behind the backend ("
        + ", ".join(backends.kinds())
        + ") mounted at MOUNTPOINT: write PATH DATA [OFFSET], truncate PATH SIZE, rename OLD "
        "NEW, unlink PATH, mkdir PATH, rmdir PATH. The backend's callbacks/attribute caches "
        "are broken as a real server would break them. An autofs backend also takes expire "
        "KEY: its automount daemon unmounts KEY and removes the mount point now (returns once "
        "the mount point is gone).",
    )
    p.add_argument("mountpoint")
    p.add_argument(
        "action", choices=["write", "truncate", "rename", "unlink", "mkdir", "rmdir", "expire"]
    )
    p.add_argument("args", nargs="*")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser(
        "cleanup",
        help="remove testbed mounts and daemons left behind (e.g. after SIGKILL)",
        description="Abort, detach and kill the testbed's leftovers (mounts with fsname "
        "stackfs:..., their daemons, service daemons, run cgroups) that are the caller's, and "
        "nothing else: a mount whose daemon is gone (anyone's), and with --run ID the mounts, "
        "daemons, services and cgroup (processes killed with cgroup.kill, after the run's "
        "FUSE connections were aborted) of that run; with --mine, of every run whose processes "
        "run as the caller's uid; with --all, everything. --dry-run lists what it would do. "
        "Each line says what was removed and why it was the caller's. A process is "
        "signalled only once it proved to be the daemon (it holds the mount's FUSE connection; "
        "a service, its control socket); one that does not is reported and left alone, and "
        "the exit status is 1.",
    )
    p.add_argument(
        "--run",
        "--run-id",
        dest="run_id",
        metavar="ID",
        help="also what the run ID owns (started with STACKFS_RUN_ID=ID)",
    )
    p.add_argument(
        "--mine", action="store_true", help="also every run whose processes run as your uid"
    )
    p.add_argument("--all", action="store_true", help="every testbed mount, daemon and cgroup")
    p.add_argument(
        "-n", "--dry-run", action="store_true", help="list what would be done, do nothing"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser(
        "testfs",
        help="mount a small test filesystem that hangs or crashes on purpose (foreground)",
        description="Test filesystems for the lifecycle and the watchdog. 'hang': a lookup of "
        "any name starting with 'hang' never gets an answer. 'lookup-mkdir': a lookup of "
        "'trigger' waits for a helper thread that mkdirs in the same directory through the "
        "mount, the real kernel deadlock of shared/NOTES.md (autofs4 shape). 'crash': the "
        "daemon dies (exit 13, no unmount) in the lookup of any name starting with 'crash'; "
        "with STACKFS_TESTFS_CRASH_MARKER=FILE only while FILE does not exist (a flaky crash).",
    )
    p.add_argument("name", choices=["hang", "lookup-mkdir", "crash"])
    p.add_argument("mountpoint")
    p.add_argument("-d", "--debug", action="store_true")
    p.set_defaults(func=cmd_testfs)
