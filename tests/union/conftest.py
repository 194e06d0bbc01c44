"""Fixtures of the union tests: one upper and two lower branches, mounted for real."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stackfs.runtime import lifecycle


def wait_for(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Union:
    """Branch directories under ``root`` and the union mounted at ``mp``."""

    root: Path
    stack: lifecycle.Stack
    upper: Path = field(init=False)
    l1: Path = field(init=False)
    l2: Path = field(init=False)
    work: Path = field(init=False)
    mp: Path = field(init=False)
    mount_obj: lifecycle.Mount | None = None
    options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("upper", "l1", "l2", "work", "mp"):
            p = self.root / name
            p.mkdir(exist_ok=True)
            setattr(self, name, p)

    def option_string(self, *extra: str) -> str:
        base = f"lowerdir={self.l1}:{self.l2},upperdir={self.upper},workdir={self.work}"
        return ",".join([base, *extra])

    def mount(self, *extra: str, lowers: list[Path] | None = None) -> lifecycle.Mount:
        if lowers is not None:
            base = (
                f"lowerdir={':'.join(map(str, lowers))},upperdir={self.upper},"
                f"workdir={self.work}"
            )
            opts = ",".join([base, *extra])
        else:
            opts = self.option_string(*extra)
        self.options = [opts]
        argv = lifecycle.stackfs_argv("mount", "-o", opts, "-f", str(self.mp))
        self.mount_obj = self.stack.mount(argv, self.mp)
        return self.mount_obj

    def umount(self) -> None:
        assert self.mount_obj is not None
        m = self.mount_obj
        self.stack.mounts.remove(m)
        rep = lifecycle.unmount(m)
        assert rep.clean, rep
        self.mount_obj = None

    def remount(self) -> lifecycle.Mount:
        opts = self.options[0]
        self.umount()
        argv = lifecycle.stackfs_argv("mount", "-o", opts, "-f", str(self.mp))
        self.mount_obj = self.stack.mount(argv, self.mp)
        return self.mount_obj

    def m(self, *parts: str) -> Path:
        return self.mp.joinpath(*parts)


def write(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    return path


@pytest.fixture
def union(tmp_path, stack) -> Union:
    """Branches (not mounted yet): call ``union.mount()`` after filling them."""
    return Union(tmp_path, stack)


@pytest.fixture
def mounted(union) -> Union:
    """A union over a small prepared tree, mounted with entry/attr timeouts of 0."""
    write(union.l1 / "a", "l1-a")
    write(union.l2 / "a", "l2-a")
    write(union.l2 / "b", "l2-b")
    write(union.l1 / "d" / "x", "l1-d-x")
    write(union.l2 / "d" / "y", "l2-d-y")
    write(union.l2 / "d" / "sub" / "z", "l2-d-sub-z")
    union.mount("timeout=0")
    return union
