"""Fixtures for the backend tests: mount a personality over a fresh store, always unmounted."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stackfs.runtime import lifecycle


def backend_argv(kind: str, store: Path, mountpoint: Path, *extra: str) -> list[str]:
    """``python -m stackfs backend mount KIND --store STORE EXTRA... -f MOUNTPOINT``."""
    return lifecycle.stackfs_argv(
        "backend", "mount", kind, "--store", str(store), *extra, "-f", str(mountpoint)
    )


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started; killed and reaped after the mounts are down (a process stuck
    in a FUSE request cannot die before its connection is aborted)."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def mount_backend(
    reaper: list[subprocess.Popen], stack: lifecycle.Stack, tmp_path: Path
) -> Callable[..., lifecycle.Mount]:
    """``mount_backend(kind, *extra, name="b")`` -> Mount; store at ``tmp_path/NAME-store``."""

    def mount(kind: str, *extra: str, name: str = "b") -> lifecycle.Mount:
        store = tmp_path / f"{name}-store"
        mp = tmp_path / f"{name}-mnt"
        store.mkdir(exist_ok=True)
        mp.mkdir(exist_ok=True)
        m = stack.mount(backend_argv(kind, store, mp, *extra), mp)
        m.store = store  # type: ignore[attr-defined]
        return m

    return mount
