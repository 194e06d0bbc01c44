"""One installation per checkout, said out loud (issue 24 item 4): ``stackfs --version`` names
the checkout, provision.sh's re-point notes (tried on a fake prefix, never on the shared venv),
and the launcher's one line for a user who cannot read the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import stackfs
from stackfs import launcher

CHECKOUT = Path(stackfs.__file__).resolve().parent.parent
VENV = Path(sys.prefix)


def fake_venv(root: Path, checkout: Path) -> Path:
    """A venv with stackfs installed editable from ``checkout``, as pip records it."""
    meta = root / "lib" / "python3.11" / "site-packages" / "stackfs-0.1.0.dist-info"
    meta.mkdir(parents=True)
    url = {"url": f"file://{checkout}", "dir_info": {"editable": True}}
    (meta / "direct_url.json").write_text(json.dumps(url))
    (root / "bin").mkdir()
    (root / "bin" / "stackfs").write_text("#!/bin/sh\n")
    return root


def test_version_names_the_checkout():
    res = subprocess.run(
        [sys.executable, "-m", "stackfs", "--version"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0 and res.stdout == (
        f"stackfs {stackfs.__version__} (checkout {CHECKOUT})\n"
    ), res.stdout + res.stderr


def test_second_checkout_says_it_repoints_the_command_and_the_venv(tmp_path):
    one, two = tmp_path / "clone1", tmp_path / "clone2"
    venv = fake_venv(tmp_path / "venv", one)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "stackfs").symlink_to(venv / "bin" / "stackfs")  # the set-up of older clones
    assert launcher.repoint_notes(bindir, venv, one) == []
    res = subprocess.run(
        [
            "/usr/bin/python3",
            str(CHECKOUT / "stackfs" / "launcher.py"),
            "notes",
            str(bindir),
            str(venv),
            str(two),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    command, venv_note = res.stdout.splitlines()
    assert command.startswith(
        f"re-pointing the command {bindir}/stackfs from the checkout {one} to {two}"
    )
    assert venv_note.startswith(
        f"re-pointing the venv {venv} (editable install) from the checkout {one} to {two}"
    )
    # the launcher that clone2's provisioning writes names clone2, and a third clone is told so
    launcher.write_launcher(bindir, venv, two)
    assert not (bindir / "stackfs").is_symlink()
    assert launcher.command_checkout(bindir / "stackfs") == (two, venv)
    [note, _venv_note] = launcher.repoint_notes(bindir, venv, tmp_path / "clone3")
    assert f"from the checkout {two} to {tmp_path / 'clone3'}" in note


def test_nothing_to_say_on_a_fresh_machine(tmp_path):
    assert launcher.repoint_notes(tmp_path / "bin", tmp_path / "venv", tmp_path / "c") == []


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory in /tmp that nobody can reach (tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="stackfs-launcher-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="needs root and runuser (runs the command as nobody)",
)
def test_a_user_who_cannot_read_the_checkout_gets_one_line(shared_dir):
    # readable: the launcher runs the checkout and the command names it
    ok = launcher.write_launcher(shared_dir / "ok", VENV, CHECKOUT)
    res = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(ok), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0 and f"(checkout {CHECKOUT})" in res.stdout, res.stderr
    # a checkout in root's private directory: one line, no traceback, status 1
    private = shared_dir / "private" / "clone"
    (private / "stackfs").mkdir(parents=True)
    (private / "stackfs" / "__init__.py").write_text("")
    (shared_dir / "private").chmod(0o700)
    bad = launcher.write_launcher(shared_dir / "bad", VENV, private)
    res = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(bad), "demo"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (
        f"stackfs: cannot read the checkout {private} that this command runs "
        "(user nobody); run it as a user who can, or provision a readable "
        "checkout\n"
    ), res.stderr
