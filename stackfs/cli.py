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

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "stackfs.union.cli",
    "backends.cli",
    "stackfs.commands",
    "stackfs.watchdog.cli",
    "stackfs.repro.cli",
]


class CLIError(Exception):
    """A one-line error for the user; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackfs",
        description=(
            "stackfs: an aufs-like union filesystem in FUSE, FUSE backends that behave like "
            "AFS and NFS (buggy and fixed), and reproducers that make the classic stacked-"
            "filesystem deadlocks and races happen on real mounts, detect them, explain them "
            "and recover."
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
