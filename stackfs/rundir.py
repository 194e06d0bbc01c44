"""The run directory: ``/run/stackfs/PID/`` holds each daemon's ``info.json`` and control socket.

``STACKFS_RUN_DIR`` moves the root (tests use it to keep runs apart). After a SIGKILL the
directory stays behind, which is how ``stackfs cleanup`` knows what a dead daemon served.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def root() -> Path:
    return Path(os.environ.get("STACKFS_RUN_DIR", "/run/stackfs"))


def daemon_dir(pid: int) -> Path:
    return root() / str(pid)


def run_id() -> str | None:
    """The run this process belongs to (``STACKFS_RUN_ID``), inherited by the daemons it starts."""
    return os.environ.get("STACKFS_RUN_ID") or None


def write_info(pid: int, info: dict[str, Any]) -> Path:
    d = daemon_dir(pid)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = d / "info.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(d / "info.json")
    return d


def read_info(pid: int) -> dict[str, Any] | None:
    try:
        return json.loads((daemon_dir(pid) / "info.json").read_text())
    except (OSError, ValueError):
        return None


def remove(pid: int) -> None:
    shutil.rmtree(daemon_dir(pid), ignore_errors=True)


def all_infos() -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    try:
        entries = list(root().iterdir())
    except OSError:
        return out
    for p in entries:
        if p.name.isdigit():
            info = read_info(int(p.name))
            if info is not None:
                out[int(p.name)] = info
    return out
