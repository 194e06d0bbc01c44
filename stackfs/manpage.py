"""Manual pages for ``stackfs`` and each of its verbs, generated from the argument parser.

``python -m stackfs.manpage DIR`` writes ``DIR/stackfs.1`` (the command and its list of verbs)
and ``DIR/stackfs-VERB.1`` for every verb (``stackfs-watch.1``, ``stackfs-repro.1``, ...), the
way git names its pages: ``man stackfs``, ``man stackfs-repro``. The pages are rendered by
argparse-manpage from :func:`stackfs.cli.build_parser`, so they say what ``--help`` says,
options, sub-verbs and ``Exit status:`` paragraphs included; nothing is written by hand.
``provision.sh`` installs them under ``/usr/local/share/man/man1``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stackfs.cli import build_parser, version

MANUAL = "stackfs manual"


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def page(parser: argparse.ArgumentParser, name: str, summary: str) -> str:
    """One page (roff) for ``parser``, titled ``name``."""
    from argparse_manpage.manpage import Manpage

    mp = Manpage(parser)
    mp.prog = name
    mp.source = version()
    mp.manual = MANUAL
    mp.description = summary
    text = str(mp)
    if "\n.SH EXIT STATUS" not in text and parser.epilog and "Exit status" in parser.epilog:
        text = text.replace("\n.SH COMMENTS\n", "\n.SH EXIT STATUS\n", 1)
    return text


def pages() -> dict[str, str]:
    """File name -> page, for ``stackfs`` and every verb."""
    top = build_parser()
    out = {
        "stackfs.1": page(
            top, "stackfs", "stacked-filesystem deadlocks and races on real FUSE mounts"
        )
    }
    helps = _summaries(top)
    for verb, parser in _verbs(top).items():
        out[f"stackfs-{verb}.1"] = page(parser, f"stackfs-{verb}", helps.get(verb, ""))
    return out


def write(directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        (d / name).write_text(text)
        written.append(d / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m stackfs.manpage DIR", file=sys.stderr)
        return 2
    for path in write(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
