"""The FUSE control filesystem (``/sys/fs/fuse/connections``): ``waiting`` and ``abort``.

Writing to ``N/abort`` fails every request of connection N that is waiting: the callers get
ECONNABORTED, the daemon ENODEV (shared/NOTES.md). N is the minor number of the mount's device.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

CONNECTIONS = Path("/sys/fs/fuse/connections")


def ensure_mounted() -> bool:
    """Mount the control filesystem if it is not mounted; return whether it is usable."""
    if _is_mounted():
        return True
    if not CONNECTIONS.is_dir():
        return False
    res = subprocess.run(
        ["mount", "-t", "fusectl", "none", str(CONNECTIONS)], capture_output=True, text=True
    )
    return res.returncode == 0 or _is_mounted()


def _safe_iter() -> Iterator[Path]:
    try:
        yield from CONNECTIONS.iterdir()
    except OSError:
        return


def _is_mounted() -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[2] == "fusectl" for line in f if line.strip())


def conn_dir(conn: int) -> Path:
    return CONNECTIONS / str(conn)


def waiting(conn: int) -> int | None:
    """Requests of connection ``conn`` in flight (``None`` if the connection is gone)."""
    try:
        return int((conn_dir(conn) / "waiting").read_text().strip())
    except (OSError, ValueError):
        return None


def abort(conn: int) -> bool:
    """Abort connection ``conn``: every waiting request fails, the daemon gets ENODEV."""
    try:
        (conn_dir(conn) / "abort").write_text("1")
        return True
    except OSError:
        return False


def connections() -> list[int]:
    return sorted(int(p.name) for p in _safe_iter() if p.name.isdigit())
