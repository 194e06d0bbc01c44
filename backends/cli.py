"""``stackfs backend mount|list``: mount a backend personality over a store directory.

``stackfs backend mount KIND --store DIR [--variant V] [-o OPT[,OPT...]]... [-f] [-d] MOUNTPOINT``

Without ``-f`` the command starts itself again with ``-f`` as a detached daemon
(:func:`stackfs.runtime.lifecycle.start_daemon`) and returns once the mount is live; with ``-f`` it
serves in the foreground (:func:`stackfs.runtime.daemon.serve`). Everything is checked before
anything is
mounted (kind, variant, store, mount point, options, injection points): an error is one line and
a non-zero status.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import backends
from stackfs.cli import CLIError
from stackfs.runtime import mountinfo


def _resolve(args: argparse.Namespace):
    """Check the command line; returns (class, variant, own options, fuse options, inject)."""
    from backends.base import split_options
    from stackfs.kernel.inject import parse_spec

    try:
        cls = backends.personality(args.kind)
    except KeyError:
        raise CLIError(
            f"unknown backend {args.kind!r} (known: {', '.join(backends.kinds())})"
        ) from None
    try:
        variant = cls.resolve_variant(args.variant)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    store = Path(args.store)
    if not store.is_dir():
        raise CLIError(f"store {args.store}: not a directory")
    mp = Path(args.mountpoint)
    if not mp.is_dir():
        raise CLIError(f"mount point {args.mountpoint}: not a directory")
    entry = mountinfo.find(mp)
    if entry is not None and entry.is_testbed:
        raise CLIError(f"mount point {args.mountpoint}: already a testbed mount ({entry.source})")
    try:
        own, fuse, inject = split_options(cls.options(), args.options)
        for spec in inject:
            point, _action = parse_spec(spec)
            if point not in cls.injection_points:
                known = ", ".join(cls.injection_points) or "none"
                raise ValueError(
                    f"unknown injection point {point!r} of {args.kind} (known: {known})"
                )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return cls, variant, own, fuse, inject


def cmd_mount(args: argparse.Namespace) -> int:
    cls, variant, own, fuse, inject = _resolve(args)
    if args.foreground:
        return _serve(cls, variant, own, fuse, inject, args)
    from stackfs.runtime import lifecycle

    argv = lifecycle.stackfs_argv(
        "backend",
        "mount",
        args.kind,
        "--store",
        os.path.abspath(args.store),
        "--variant",
        variant,
    )
    for spec in args.options:
        argv += ["-o", spec]
    if args.debug:
        argv.append("-d")
    argv += ["-f", os.path.abspath(args.mountpoint)]
    try:
        m = lifecycle.start_daemon(argv, args.mountpoint, detach=True)
    except lifecycle.MountError as exc:
        raise CLIError(str(exc).splitlines()[-1] if str(exc) else "mount failed") from None
    print(f"{args.kind} ({variant}) mounted at {m.mountpoint}: daemon {m.pid}, log {m.log}")
    return 0


def _serve(cls, variant, own, fuse, inject, args) -> int:
    from stackfs.runtime.daemon import DaemonConfig, serve

    os.umask(0)  # modes arrive with the caller's umask applied; create exactly those
    try:
        ops = cls(args.store, variant=variant, options=own)
        for spec in inject:
            ops.kernel.inject.configure(spec)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    cfg = DaemonConfig(
        kind=cls.kind,
        mountpoint=Path(args.mountpoint),
        variant=variant,
        fuse_options=fuse,
        debug=args.debug,
        inject=list(inject),
    )
    return serve(ops, cfg)


def cmd_list(args: argparse.Namespace) -> int:
    for kind in backends.kinds():
        cls = backends.personality(kind)
        print(f"{kind}")
        aliases: dict[str, list[str]] = {}
        for alias, name in cls.variant_aliases.items():
            aliases.setdefault(name, []).append(alias)
        for i, (name, text) in enumerate(cls.variants.items()):
            also = f" (also: {', '.join(aliases[name])})" if name in aliases else ""
            print(f"  variant {name}{' (default)' if i == 0 else ''}{also}: {text}")
        for name, text in cls.injection_points.items():
            print(f"  inject {name}: {text}")
        for opt in cls.options():
            print(
                f"  -o {opt.name}{'' if opt.kind is bool else '=' + opt.kind.__name__.upper()}"
                f" (default {opt.default}): {opt.help}"
            )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    kinds = ", ".join(backends.kinds())
    p = sub.add_parser(
        "backend",
        help=f"mount a backend ({kinds}; stackfs backend list)",
        description="Backends are FUSE filesystems over a store directory that plays the "
        "server; the personality (`stackfs backend list`) plays the client, in a buggy or a "
        "fixed variant.",
    )
    bsub = p.add_subparsers(dest="backend_command", metavar="SUBCOMMAND")
    m = bsub.add_parser(
        "mount",
        help="mount a backend",
        description=f"Mount backend KIND ({kinds}) over the store directory at MOUNTPOINT. "
        "Without -f, return once the mount is live (the daemon runs detached).",
    )
    m.add_argument("kind", metavar="KIND", help=f"the personality: {kinds}")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("--store", required=True, metavar="DIR", help="the server's directory")
    m.add_argument("--variant", metavar="V", help="variant (see `stackfs backend list`)")
    m.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="options: entry_timeout=S, attr_timeout=S, panic_on_oops, inject=POINT=ACTION, "
        "personality options, or FUSE options (repeatable, comma-separated)",
    )
    m.add_argument("-f", "--foreground", action="store_true", help="serve in the foreground")
    m.add_argument("-d", "--debug", action="store_true", help="FUSE debug output")
    m.set_defaults(func=cmd_mount)
    ls = bsub.add_parser("list", help="list personalities, variants, injection points, options")
    ls.set_defaults(func=cmd_list)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
