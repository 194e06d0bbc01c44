"""Reading ``/proc/self/mountinfo``: which FUSE mounts exist, and which of them are the testbed's.

A testbed mount carries the fsname ``stackfs:KIND:PID[:RUN]`` (PID is the daemon's pid, RUN its
run id: :func:`testbed_fsname`) and the fstype ``fuse.stackfs``; :func:`testbed_mounts` finds
them, and nothing else. A union mounted through mount(8) (``mount -t fuse.stackfs SOURCE MP``)
keeps SOURCE as its fsname, as fstests' FUSE support expects: its daemon is then found through
its run directory (``/run/stackfs/PID/info.json`` records the fsname, the mount point and the
connection).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from stackfs.runtime import rundir

FSNAME_PREFIX = "stackfs:"
SUBTYPE = "stackfs"
_LABEL_BAD = re.compile(r"[^A-Za-z0-9._-]")


def run_label(run_id: str) -> str:
    """A run id as an fsname field and a cgroup name: ``[A-Za-z0-9._-]``, anything else ``_``
    (a comma would split the mount options, a colon the fsname, a slash a path)."""
    out = _LABEL_BAD.sub("_", run_id)[:120]
    return out if out.strip(".") else "_"


def testbed_fsname(kind: str, pid: int, run_id: str | None) -> str:
    """``stackfs:KIND:PID`` or, in a run, ``stackfs:KIND:PID:RUN``: the kernel shows the mount's
    run in mountinfo for as long as the mount exists, its daemon alive or not."""
    base = f"{FSNAME_PREFIX}{kind}:{pid}"
    return f"{base}:{run_label(run_id)}" if run_id else base


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) that the kernel's ``show_path`` writes."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: the fields the testbed needs."""

    mount_id: int
    major: int
    minor: int
    mountpoint: str
    fstype: str
    source: str
    options: str
    #: the per-mount options (field 6: ``rw,nosuid,nodev,noexec,relatime``); ``options`` are
    #: the superblock's
    mount_options: str = ""

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith("fuse.") or self.fstype == "fuseblk"

    @property
    def is_testbed(self) -> bool:
        return self.source.startswith(FSNAME_PREFIX) or self.fstype == f"fuse.{SUBTYPE}"

    @property
    def conn(self) -> int:
        """The FUSE connection number: the minor of the mount's anonymous device."""
        return self.minor

    @property
    def kind(self) -> str | None:
        parts = self.source.split(":")
        if len(parts) >= 3 and self.source.startswith(FSNAME_PREFIX):
            return parts[1]
        found = self._run_info()
        return str(found[1].get("kind")) if found is not None else None

    @property
    def daemon_pid(self) -> int | None:
        """The daemon's pid, read back from the fsname ``stackfs:KIND:PID`` (or, for a mount
        with a SOURCE of its own, from the run directory of the daemon that mounted it)."""
        parts = self.source.split(":")
        if len(parts) >= 3 and self.source.startswith(FSNAME_PREFIX) and parts[2].isdigit():
            return int(parts[2])
        found = self._run_info()
        return found[0] if found is not None else None

    @property
    def run_label(self) -> str | None:
        """The run of the mount (:func:`run_label` of its run id): the fsname's fourth field, or
        for a mount with a SOURCE of its own, its daemon's run directory."""
        parts = self.source.split(":", 3)
        if self.source.startswith(FSNAME_PREFIX) and len(parts) >= 3 and parts[2].isdigit():
            return parts[3] if len(parts) == 4 else None
        found = self._run_info()
        rid = found[1].get("run_id") if found is not None else None
        return run_label(rid) if isinstance(rid, str) and rid else None

    def _run_info(self) -> tuple[int, dict[str, object]] | None:
        """(pid, info) of the daemon whose run directory says it mounted this (fsname, mount
        point and, once known, connection all match); only for ``fuse.stackfs`` mounts."""
        if self.fstype != f"fuse.{SUBTYPE}":
            return None
        for pid, info in rundir.all_infos().items():
            if (
                info.get("fsname") == self.source
                and info.get("mountpoint") == self.mountpoint
                and info.get("conn") in (None, self.conn)
            ):
                return pid, info
        return None


def parse_line(line: str) -> MountEntry:
    fields = line.split()
    sep = fields.index("-")
    major, minor = fields[2].split(":")
    return MountEntry(
        mount_id=int(fields[0]),
        major=int(major),
        minor=int(minor),
        mountpoint=_unescape(fields[4]),
        fstype=fields[sep + 1],
        source=_unescape(fields[sep + 2]),
        options=fields[sep + 3] if len(fields) > sep + 3 else "",
        mount_options=fields[5],
    )


def mounts(path: str | Path = "/proc/self/mountinfo") -> list[MountEntry]:
    # a mount point is bytes: one that is not UTF-8 is kept as os.fsdecode keeps it
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [parse_line(line) for line in f if line.strip()]


def fuse_mounts() -> list[MountEntry]:
    return [m for m in mounts() if m.is_fuse]


def testbed_mounts() -> list[MountEntry]:
    return [m for m in mounts() if m.is_fuse and m.is_testbed]


def find(mountpoint: str | os.PathLike[str]) -> MountEntry | None:
    """The topmost mount at exactly ``mountpoint`` (no path walk, so it never blocks on FUSE)."""
    target = os.path.abspath(mountpoint)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m
    return found
