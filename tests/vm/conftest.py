"""Fixtures of the ``stackfs vm`` tests: a kernel store with fake kernels, the fake ``vng``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FAKE_VNG = Path(__file__).with_name("fake_vng.py")


def add_kernel(store: Path, release: str) -> Path:
    """A fetched-kernel tree as ``stackfs vm fetch`` leaves it (the image is not a kernel)."""
    root = store / release
    (root / "boot").mkdir(parents=True)
    (root / "lib" / "modules" / release / "kernel" / "fs" / "fuse").mkdir(parents=True)
    image = root / "boot" / f"vmlinuz-{release}"
    image.write_bytes(b"not a kernel")
    (root / "stackfs-kernel.json").write_text(
        json.dumps({"release": release, "package": f"linux-image-{release}", "version": "1"})
    )
    return image


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kernel store ($STACKFS_VM_KERNELS) and no /boot images taken into account."""
    s = tmp_path / "kernels"
    s.mkdir()
    monkeypatch.setenv("STACKFS_VM_KERNELS", str(s))
    from stackfs.vm import kernels

    monkeypatch.setattr(kernels, "in_boot", lambda *a, **k: [])
    monkeypatch.setattr(kernels, "running", lambda *a, **k: None)
    return s


@pytest.fixture
def fake_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a ``stackfs vm`` whose "VM" is this host (see fake_vng.py)."""
    env = {
        "STACKFS_VM_VNG": f"{FAKE_VNG}",
        "STACKFS_VM_QEMU": sys.executable,  # any executable: the fake vng boots nothing
        "FAKE_VNG_LOG": str(tmp_path / "vng.log"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
