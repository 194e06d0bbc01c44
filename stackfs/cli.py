"""The ``stackfs`` command.

Subcommands come from the modules in :data:`COMMAND_MODULES`; each has ``add_parser(subparsers)``
that registers its commands with ``func=`` set to a callable taking the parsed arguments and
returning the exit status. Errors are one line on stderr and a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "stackfs.union.cli",
    "backends.cli",
    "stackfs.admin_cli",
    "stackfs.watchdog.cli",
    "stackfs.repro.cli",
    "stackfs.repro.explore",
    "stackfs.vm.cli",
    "stackfs.cluster_cli",
    "backends.automountd",
]


class CLIError(Exception):
    """A one-line error for the user; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


#: the ``Exit status:`` paragraph of a verb whose description does not give its own
EXIT_STATUS_DEFAULT = (
    "Exit status: 0 success; 1 the operation failed (one line on stderr says "
    "why); 2 bad command line; 130 interrupted (Ctrl-C)."
)
EXIT_STATUS = {
    "stackfs": "Exit status: that of the COMMAND; 2 without one or on a bad command line.",
    "stackfs repro": "Exit status: that of the SUBCOMMAND; 2 without one.",
    "stackfs repro show": "Exit status: 0 printed; 2 an unknown scenario or a bad command line.",
    "stackfs demo": "Exit status: 0 every run matched its variant's expectation and nothing is "
    "left mounted; 1 otherwise; 2 set-up error or bad command line; 4 skipped: "
    "no scenario can run on this machine (the reasons are printed); 130 "
    "interrupted.",
}


def _exit_statuses(parser: argparse.ArgumentParser, path: str) -> None:
    """Give every parser that does not say it an ``Exit status:`` epilog, recursively."""
    text = f"{parser.description or ''} {parser.epilog or ''}"
    if "Exit status" not in text:
        extra = textwrap.fill(EXIT_STATUS.get(path, EXIT_STATUS_DEFAULT), 78)
        parser.epilog = f"{parser.epilog}\n\n{extra}" if parser.epilog else extra
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if child is not parser:
                    _exit_statuses(child, f"{path} {name}")


def version() -> str:
    from stackfs import __version__

    return f"stackfs {__version__}"


def checkout() -> Path:
    """The checkout this command runs: the directory that holds the ``stackfs`` package (an
    editable install runs the clone it was installed from; provision.sh re-points it)."""
    import stackfs

    return Path(stackfs.__file__).resolve().parent.parent


def version_line() -> str:
    """``stackfs --version``: the version and the checkout it runs."""
    return f"{version()} (checkout {checkout()})"


#: options of the ``stackfs`` command itself, accepted after the verb too
#: (``stackfs demo --junit x --ascii``): (flags, argparse keywords)
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--ascii",),
        {
            "action": "store_true",
            "help": "plain ASCII output: no symbols that mailing lists mangle "
            "(the default when stdout is not a terminal)",
        },
    ),
]


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Give ``parser`` the global options; below the top they default to SUPPRESS, so a verb's
    parser leaves the value given before the verb alone, and every subcommand's parser,
    recursively, accepts them after its own arguments."""
    for flags, kw in GLOBAL_OPTIONS:
        parser.add_argument(*flags, **(kw if top else {**kw, "default": argparse.SUPPRESS}))
    parser.add_argument(
        "--version",
        action="version",
        version=version_line(),
        help="print the version and the checkout this command runs, and exit",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child is not parser:
                    _add_global_options(child, top=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackfs",
        description=(
            "stackfs: an aufs-like union filesystem in FUSE, FUSE backends that behave like "
            "AFS, NFS, autofs, Lustre and GFS2 (buggy and fixed), and reproducers that make "
            "the classic stacked, network and cluster filesystem deadlocks and races happen on "
            "real mounts, detect them, explain them and recover."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of the testbed is not there (yet)
            raise
        module.add_parser(sub)
    _add_global_options(parser, top=True)
    _exit_statuses(parser, "stackfs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ascii or not sys.stdout.isatty():
        from stackfs.repro.present import set_ascii

        set_ascii(True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"stackfs: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `stackfs ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
