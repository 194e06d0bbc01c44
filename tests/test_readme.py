"""The README's examples run as written (issue 26 item 1), and so do docs/plugin.md's.

A fenced block's info string says what it is:

``sh example``
    shell lines, run as one ``bash -e -o pipefail`` script in a scratch directory (``$TMPDIR``
    is the test's, so ``mktemp -d`` stays in it), with this checkout's ``stackfs`` first on PATH
``python pytest``
    a test module; a document's modules run together in a temporary directory outside the
    repository, with the venv's pytest
``sh skip: REASON``, ``python skip: REASON``
    not run here, for REASON (the set-up itself, a VM, the network, minutes of runtime)

Other languages (``console``: a transcript; no language: output) are not commands. Every ``sh``
and ``python`` block carries one of the marks, so no example escapes the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stackfs.runtime import lifecycle, mountinfo
from stackfs.runtime.service import timeout_factor

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "plugin.md"]
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    mark: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.doc.name}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    out: list[Block] = []
    opened: tuple[int, str, str] | None = None
    body: list[str] = []
    for n, line in enumerate(doc.read_text().splitlines(), start=1):
        m = FENCE.match(line)
        if m is None:
            if opened is not None:
                body.append(line)
        elif opened is None:
            opened, body = (n, m.group(1), m.group(2).strip()), []
        else:
            out.append(Block(doc, opened[0], opened[1], opened[2], "\n".join(body) + "\n"))
            opened = None
    assert opened is None, f"{doc.name}:{opened[0]}: a fenced block is never closed"
    return out


def commands(lang: str, mark: str) -> list[Block]:
    return [b for d in DOCS for b in blocks(d) if b.lang == lang and b.mark.startswith(mark)]


def test_every_shell_and_python_block_says_what_it_is():
    unmarked = [
        b.name
        for d in DOCS
        for b in blocks(d)
        if b.lang in ("sh", "bash", "shell", "python", "py")
        and not (b.mark in ("example", "pytest") or re.match(r"skip: \S", b.mark))
    ]
    assert not unmarked, f"blocks without 'example', 'pytest' or 'skip: REASON': {unmarked}"
    assert commands("sh", "example") and commands("python", "pytest")


@pytest.fixture
def scratch(tmp_path: Path):
    """A scratch directory as ``$TMPDIR`` and cwd, a run id of its own; afterwards every
    testbed mount under it is taken down (a failed example leaves nothing behind)."""
    run_id = f"readme-{os.getpid()}-{tmp_path.name}"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "stackfs"  # this checkout's command, whichever checkout the venv runs
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m stackfs "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp_path),
        "STACKFS_RUN_ID": run_id,
        "MANPAGER": "cat",
        "MANWIDTH": "80",
    }
    try:
        yield work, env
    finally:
        lifecycle.cleanup(run_id=run_id)
        for e in mountinfo.testbed_mounts():
            if e.mountpoint.startswith(f"{tmp_path}/"):
                lifecycle.lazy_detach(e.mountpoint)


@pytest.mark.xdist_group("demo")  # the harness example runs the demo
@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(700)
@pytest.mark.parametrize("block", commands("sh", "example"), ids=lambda b: b.name)
def test_shell_example_runs_as_written(block: Block, scratch):
    work, env = scratch
    res = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600 * timeout_factor(),
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{block.name} failed with status {res.returncode}:\n{out}"
    assert "Traceback" not in out, out


@pytest.mark.parametrize(
    "block", commands("sh", "skip:") + commands("python", "skip:"), ids=lambda b: b.name
)
def test_skipped_example(block: Block):
    pytest.skip(f"{block.name}: {block.mark.removeprefix('skip:').strip()}")


@pytest.mark.xdist_group("demo")  # the harness example runs the demo
@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.timeout(700)
@pytest.mark.parametrize(
    "doc",
    [d for d in DOCS if any(b.lang == "python" and b.mark == "pytest" for b in blocks(d))],
    ids=lambda d: d.name,
)
def test_python_examples_pass_with_the_venvs_pytest(doc: Path, scratch):
    work, env = scratch
    mine = [b for b in blocks(doc) if b.lang == "python" and b.mark == "pytest"]
    for i, b in enumerate(mine):
        (work / f"test_{doc.stem.lower()}_{i}_line{b.line}.py").write_text(b.text)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",
            "-p",
            "no:xdist",
            "--timeout",
            "120",
            ".",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600 * timeout_factor(),
    )
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    tests = sum(b.text.count("\ndef test_") + b.text.startswith("def test_") for b in mine)
    assert res.stdout.count(" PASSED") == tests, res.stdout[-6000:]
