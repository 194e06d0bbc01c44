"""Fixtures of the watchdog tests: the hanging test filesystems of stackfs/testfs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stackfs.runtime import lifecycle


@pytest.fixture
def testfs(stack, tmp_path):
    """``testfs(name)`` mounts ``stackfs testfs NAME`` in the test's stack; returns the Mount."""

    def mount(name: str) -> lifecycle.Mount:
        mp = tmp_path / f"mnt-{name}"
        mp.mkdir()
        return stack.mount(lifecycle.stackfs_argv("testfs", name, str(mp)), mp)

    return mount


@pytest.fixture
def workload():
    """``workload(argv)`` starts a process; every one is killed and reaped after the test."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel: the stack fixture's abort releases it


@pytest.fixture
def nothing_left(stack):
    """``nothing_left(mount, tids)``: asserts no mount, no daemon, no blocked task is left.

    The mount is then dropped from the stack: its connection number may already belong to
    another test's mount, which the stack's teardown must not abort.
    """

    def check(mount: lifecycle.Mount, tids: list[int]) -> None:
        assert_nothing_left(mount, tids)
        if mount in stack.mounts:
            stack.mounts.remove(mount)

    return check


@pytest.fixture
def picture_ok():
    """``picture_ok(files)``: the report's SVG and PNG are there and valid."""

    def check(files: dict[str, str]) -> None:
        assert valid_svg(Path(files["svg"])), files
        assert valid_png(Path(files["png"])), files

    return check


def assert_nothing_left(mount: lifecycle.Mount, tids: list[int]) -> None:
    """No mount, no daemon, no blocked task: what recovery promises."""
    from stackfs.runtime import mountinfo
    from stackfs.watchdog import procscan

    # (a connection number is handed out again at once: compare the mount point too)
    assert not any(e.conn == mount.conn and e.mountpoint == str(mount.mountpoint)
                   for e in mountinfo.fuse_mounts())
    assert mountinfo.find(mount.mountpoint) is None
    assert mount.proc is not None and mount.proc.wait(timeout=5) is not None
    assert procscan.Scanner().still_blocked(tids) == []


def valid_png(path: Path) -> bool:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width > 0 and height > 0


def valid_svg(path: Path) -> bool:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    return root.tag.endswith("svg") and len(list(root.iter())) > 5
