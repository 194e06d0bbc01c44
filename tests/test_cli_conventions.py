"""The command line's conventions: --version, exit statuses in every --help, man pages
generated from the parser, ASCII output for mailing lists."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from stackfs import __version__, manpage
from stackfs.cli import build_parser
from stackfs.repro import present
from stackfs.runtime import lifecycle


def stackfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lifecycle.stackfs_argv(*args), capture_output=True, text=True, timeout=60)


def parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        out[path] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    walk(child, f"{path} {name}")

    walk(build_parser(), "stackfs")
    return out


def test_version():
    res = stackfs("--version")
    assert res.returncode == 0 and res.stdout.startswith(f"stackfs {__version__} (checkout /")


@pytest.mark.parametrize("args", [["repro", "list", "--ascii"],
                                  ["repro", "run", "aufs-afs-copyup", "--ascii"],
                                  ["demo", "--junit", "x.xml", "--ascii"],
                                  ["backend", "mount", "afs", "/m", "--ascii", "--store", "/s"]])
def test_global_options_are_accepted_after_the_verb_too(args):
    assert build_parser().parse_args(args).ascii is True
    assert build_parser().parse_args(["--ascii", "demo"]).ascii is True
    assert build_parser().parse_args(["demo"]).ascii is False
    res = stackfs("repro", "list", "--version")
    assert res.returncode == 0 and res.stdout.startswith(f"stackfs {__version__}")


def test_every_help_that_names_backends_names_every_backend():
    import backends

    all_parsers = parsers()
    for path in ("stackfs backend mount", "stackfs server"):
        text = " ".join(all_parsers[path].format_help().split())
        assert all(kind in text for kind in backends.kinds()), (path, text)
    top = " ".join(all_parsers["stackfs"].format_help().split())
    assert "mount a backend (" + ", ".join(backends.kinds()) in top


def test_vm_run_help_says_it_returns_the_commands_status():
    text = " ".join(parsers()["stackfs vm run"].format_help().split())
    statuses = text.split("Exit status: ", 1)[1]
    assert statuses.startswith("that of CMD in the guest") and "124 when --timeout" in statuses
    assert "1 the operation failed" not in statuses


def test_every_verbs_help_lists_its_exit_statuses():
    all_parsers = parsers()
    assert {"stackfs watch", "stackfs repro run", "stackfs demo"} <= set(all_parsers)
    for path, p in all_parsers.items():
        text = " ".join(p.format_help().split())
        assert "Exit status: " in text, path
        statuses = text.split("Exit status: ", 1)[1]
        assert "0 " in statuses or path in ("stackfs", "stackfs repro"), path
    assert "4 when the scenario cannot run here" in " ".join(
        all_parsers["stackfs repro run"].format_help().split()
    )


def test_man_pages_are_generated_for_stackfs_and_every_verb(tmp_path):
    written = {p.name for p in manpage.write(tmp_path)}
    verbs = {path.split()[1] for path in parsers() if len(path.split()) == 2}
    assert written == {"stackfs.1"} | {f"stackfs-{v}.1" for v in verbs}
    top = (tmp_path / "stackfs.1").read_text()
    assert top.startswith('.TH STACKFS "1"') and f"stackfs {__version__}" in top
    assert ".SH EXIT STATUS" in (tmp_path / "stackfs-demo.1").read_text()
    assert "\\-\\-kmsg" in (tmp_path / "stackfs-watch.1").read_text()
    if shutil.which("man"):
        res = subprocess.run(
            ["man", "-l", str(tmp_path / "stackfs-repro.1")],
            capture_output=True,
            text=True,
            timeout=30,
            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MANPAGER": "cat"},
        )
        assert res.returncode == 0 and "stackfs repro run" in res.stdout, res.stderr


def test_ascii_output_has_no_symbols_mailing_lists_mangle(monkeypatch):
    monkeypatch.setattr(present, "ASCII", True)
    out = present.table(
        ["observed", "matched"], [["deadlock \u2713", "1/1"], ["completes \u2717", "0/1"]]
    )
    assert out.isascii() and "deadlock ok" in out and "completes FAIL" in out
    lines = out.splitlines()
    assert len({ln.index("1/1") if "1/1" in ln else ln.index("0/1") for ln in lines[2:]}) == 1
    assert present.plain("deadlock \u00d72") == "deadlock x2"


@pytest.mark.parametrize("args", [["--ascii", "repro", "list"], ["repro", "list", "-v"]])
def test_plain_output_when_asked_or_not_a_terminal(args):
    res = stackfs(*args)  # stdout is a pipe here: plain output either way
    assert res.returncode == 0
    mangled = [c for c in "\u2713\u2717\u00d7\u2192\u2014\u2026" if c in res.stdout]
    assert not mangled, mangled
