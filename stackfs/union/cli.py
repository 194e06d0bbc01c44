"""``stackfs mount``: mount the union (aufs or overlayfs spelling of the branches).

Without ``-f`` the command validates the options, starts itself with ``-f`` as a daemon of its
own (:func:`stackfs.runtime.lifecycle.start_daemon`, detached) and returns once the mount is live;
a bad
option, a missing or overlapping branch or a workdir on another filesystem is a one-line error
and nothing is mounted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from stackfs.cli import CLIError
from stackfs.union import options as uopts

DESCRIPTION = """\
Mount the aufs-like union filesystem at MOUNTPOINT.

Branches, aufs syntax (leftmost on top):   -o br=UPPER=rw:LOWER1=ro:LOWER2=ro
Branches, overlayfs syntax:                -o lowerdir=LOWER1:LOWER2,upperdir=UPPER,workdir=WORK
Without a rw/upper branch the union is read-only (EROFS on writes).

More options: entry_timeout=S, attr_timeout=S, negative_timeout=S, timeout=S (entry and attr;
default 5 s; 0 shows changes made directly in a branch at once), copyup=plain|aufs|aufs-unlock
(plain: no cross-layer lock; aufs: lock the lower inode before opening it, as aufs did in
2014; aufs-unlock: drop the lock around the open, the 2024 aufs fix), inject=POINT=ACTION
(injection point copy_up), whiteout=aufs|overlay (the form of the whiteouts and opaque
directories written in the upper: aufs .wh.NAME files, the default, or overlayfs' 0/0
character devices and trusted.overlay.opaque; both forms are read in every branch), ro, debug,
userxattr (overlayfs' option: the overlayfs metadata is user.overlay.*, and xattr redirects are
not followed; without it only trusted.overlay.* is, and user.overlay.* is a user's own data).
Numbers are plain decimals: timeouts 0 to 4294967295 s, max_tasks=N (1 to 65535, default 64).

A ",", ":", "=" or "\\" in a branch path is written with a backslash before it ("a\\,b"), as
overlayfs takes it. The generic mount flags (nosuid, suid, nodev, dev, noexec, exec, sync,
async, dirsync, noatime, atime, relatime) go to the kernel mount; ro makes the union and the
kernel mount read-only; flags a FUSE mount cannot have (strictatime, nodiratime, lazytime,
nosymfollow, ...) are refused. Each branch option (br, lowerdir, upperdir, workdir) is given
once; a mount point inside a branch or the workdir, or holding one, is refused.

Kernel fast paths (fewer FUSE requests; need the patched pyfuse3 of provision.sh):
no_open=on|off (default on: no OPEN/RELEASE, I/O by inode, copy-up at the first write
instead of at open), no_opendir=on|off and cache_dir=on|off (default on: the kernel caches
listings), read_ahead_kb=KIB (0 to 1048576, default 1024), writeback_cache=on|off
(default off), fastpath=off (all of them off: the seeds' kernel paths, as the reproducers mount).
"""


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("stackfs:"):
            return ln[len("stackfs:") :].strip()
    return lines[-1] if lines else "unknown error"


def parse_and_validate(option_texts: list[str], mountpoint: str) -> uopts.UnionOptions:
    try:
        o = uopts.parse(option_texts)
        for spec in o.inject:
            from stackfs.kernel.inject import parse_spec

            try:
                parse_spec(spec)
            except ValueError as exc:
                raise uopts.OptionError(f"bad inject={spec}: {exc}") from None
        return uopts.validate(o, mountpoint)
    except uopts.OptionError as exc:
        raise CLIError(str(exc)) from None


def cmd_mount(args: argparse.Namespace) -> int:
    o = parse_and_validate(args.options, args.mountpoint)
    if args.debug:
        o.debug = True
    if not args.foreground:
        from stackfs.runtime import lifecycle

        argv = lifecycle.stackfs_argv("mount")
        for text in args.options:
            argv += ["-o", text]
        if args.source:
            argv += ["--source", args.source]
        argv += ["-f"] + (["-d"] if args.debug else []) + [args.mountpoint]
        try:
            lifecycle.start_daemon(argv, args.mountpoint, detach=True)
        except lifecycle.MountError as exc:
            raise CLIError(f"mounting {args.mountpoint} failed: {_one_line(str(exc))}") from None
        return 0
    return run(o, args.mountpoint, args.source)


def run(o: uopts.UnionOptions, mountpoint: str, source: str | None = None) -> int:
    """Serve the union in the foreground until unmounted."""
    from stackfs.runtime.daemon import DaemonConfig, serve
    from stackfs.union.fs import UnionFS

    logging.basicConfig(
        level=logging.DEBUG if o.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.umask(0)  # modes come from the kernel already masked
    try:
        ops = UnionFS(o)
    except OSError as exc:
        print(f"stackfs: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # the generic flags go to the kernel mount (libfuse's fuse_kern_mount); without an upper
    # branch (none given, or ``ro``) the kernel mount is read-only too
    fuse_opts = o.mount_flags() + ([] if ops.sbi.upper is not None else ["ro"])
    cfg = DaemonConfig(
        kind="union",
        mountpoint=Path(mountpoint),
        variant=o.copyup,
        fuse_options=fuse_opts,
        debug=o.debug,
        inject=o.inject,
        max_tasks=o.max_tasks,
        source=source,
    )
    try:
        return serve(ops, cfg)
    finally:
        ops.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mount",
        help="mount the aufs-like union filesystem",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated mount options (repeatable)",
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "-d",
        "--debug",
        action="store_true",
        help="log every request (implies -f output on stderr of the daemon)",
    )
    p.add_argument(
        "--source",
        metavar="SOURCE",
        type=_source,
        help="the mount's source in /proc/mounts (what mount(8) passes; default "
        "stackfs:union:PID; stackfs cleanup finds the mount through its run "
        "directory either way)",
    )
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_mount)


def _source(text: str) -> str:
    if not text or "," in text or "\n" in text:
        raise argparse.ArgumentTypeError(f"bad source {text!r} (no commas or newlines)")
    return text
