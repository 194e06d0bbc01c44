"""A run's cgroup (v2): where the daemons and workload processes of one stack live, so that
"what belongs to this run" is a kernel fact, and how they are all found and reaped at once.

Layout: ``CGROUP2/stackfs/RUN/STACK`` where ``CGROUP2`` is the cgroup2 mount (``/sys/fs/cgroup``
on a unified host, ``/sys/fs/cgroup/unified`` on a hybrid one like this machine's),
``stackfs`` the testbed's parent cgroup (root's, no controllers: only the core files are used),
``RUN`` the run id (:func:`stackfs.runtime.mountinfo.run_label`) and ``STACK`` one
:class:`~stackfs.runtime.lifecycle.Stack` of it (``PID-N``: two stacks of one run id at once never
reap each other's processes).

A process joins at start: :meth:`RunCgroup.wrap` puts ``/bin/sh -c 'echo $$ >
CG/cgroup.procs && exec "$@"'`` in front of its argv, so it is in the cgroup before it execs
and before it can fork (what ``clone3(CLONE_INTO_CGROUP)`` does in one call; Python 3.11's
``subprocess`` has no way to ask for it). Children inherit it (``cgroup_post_fork``).

Reaping mirrors systemd's scope stop: abort the run's FUSE connections first (a task in
``filename_create``'s ``down_write`` is in D state and no signal gets it out; the abort does),
then ``cgroup.kill`` (Linux 5.14, ``cgroup_kill_write()``: SIGKILL to every process of the
subtree, new forks included), wait for ``cgroup.events`` to say ``populated 0``, ``rmdir``.

Where there is no writable cgroup2 (not root, a read-only ``/sys/fs/cgroup`` in a CI container,
cgroup v1 only) :func:`unavailable` says why in one line and runs fall back to pids.
Verified on this machine (6.18, hybrid hierarchy, as root): a process moved by ``echo $$ >
cgroup.procs`` then exec'd is listed in ``cgroup.procs``; ``echo 1 > cgroup.kill`` ends it with
SIGKILL (status 137) and ``cgroup.events`` goes to ``populated 0``; ``rmdir`` then succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stackfs.linux import proc
from stackfs.runtime import mountinfo

#: the testbed's parent cgroup, under the cgroup2 hierarchy's root
PARENT = "stackfs"
_counter = itertools.count(1)
#: a run id as a cgroup name (the same as in the fsname)
label = mountinfo.run_label


def hierarchy() -> Path | None:
    """The cgroup2 mount point (``/sys/fs/cgroup`` preferred), or None."""
    found = [Path(e.mountpoint) for e in mountinfo.mounts() if e.fstype == "cgroup2"]
    for p in found:
        if p == Path("/sys/fs/cgroup"):
            return p
    return found[0] if found else None


_reason: list[str | None] = []


def unavailable() -> str | None:
    """Why runs get no cgroup here (one line), or None when they do; checked once."""
    if not _reason:
        _reason.append(_check())
    return _reason[0]


def _check() -> str | None:
    top = hierarchy()
    if top is None:
        return "no cgroup2 hierarchy is mounted (cgroup v1 only)"
    parent = top / PARENT
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(parent, 0o755)
        _check_ours(parent)
        if not os.access(parent / "cgroup.procs", os.W_OK):
            return f"{parent}/cgroup.procs is not writable"
    except OSError as exc:
        return f"cannot create {parent}: {exc.strerror or exc}"
    except CgroupError as exc:
        return str(exc)
    return None


class CgroupError(Exception):
    """A cgroup of the testbed cannot be used (one line)."""


def _check_ours(path: Path) -> None:
    """Trust a testbed cgroup directory only if it is root's (or ours) and nobody else can
    write it: its ``cgroup.procs`` decides which processes are killed."""
    st = os.lstat(path)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise CgroupError(f"{path} belongs to uid {st.st_uid} or others can write it: refused")


def parent() -> Path | None:
    """``CGROUP2/stackfs`` when runs get cgroups here, else None."""
    top = hierarchy()
    return top / PARENT if top is not None and unavailable() is None else None


def run_path(run_id: str) -> Path | None:
    """The cgroup of the run ``run_id`` (all of its stacks), or None."""
    p = parent()
    return p / label(run_id) if p is not None else None


def run_cgroups() -> dict[str, Path]:
    """label -> cgroup of every run that has one now."""
    p = parent()
    if p is None:
        return {}
    with contextlib.suppress(OSError):
        return {d.name: d for d in p.iterdir() if d.is_dir()}
    return {}


def pids_under(path: Path) -> set[int]:
    """Every process in the cgroup ``path`` and below (``cgroup.procs`` of each)."""
    out: set[int] = set()
    for d, _dirs, files in os.walk(path):
        if "cgroup.procs" not in files:
            continue
        with contextlib.suppress(OSError):
            out.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
    return out


def populated(path: Path) -> bool:
    """``cgroup.events``: is any process left in the subtree (False once it is gone)?"""
    try:
        text = (path / "cgroup.events").read_text()
    except OSError:
        return False
    return "populated 1" in text.splitlines()


def kill(path: Path, timeout: float = 5.0) -> set[int]:
    """``cgroup.kill`` on ``path`` (the whole subtree), then wait for ``populated 0``;
    returns the pids that were there. A cgroup that is gone is nothing to do."""
    before = pids_under(path)
    if not before:
        return before
    _check_ours(path)
    try:
        (path / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        return set()
    deadline = time.monotonic() + timeout
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return before


def remove(path: Path) -> bool:
    """``rmdir`` the cgroup and its empty children, deepest first (EBUSY while populated)."""
    ok = True
    for d, dirs, _files in os.walk(path, topdown=False):
        for name in dirs:
            ok = _rmdir(Path(d) / name) and ok
    return _rmdir(path) and ok


def remove_dead(run: Path) -> None:
    """``rmdir`` the empty stack cgroups of ``run`` whose creator (``PID`` of ``PID-N``) is gone,
    then ``run`` if that left it empty: a live stack's cgroup stays, even before its first
    process joins it."""
    with contextlib.suppress(OSError):
        for d in run.iterdir():
            pid = d.name.split("-", 1)[0]
            if d.is_dir() and not (pid.isdigit() and proc.alive(int(pid))):
                remove(d)
        _rmdir(run)


def _rmdir(path: Path) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def of_pid(pid: int) -> str | None:
    """The cgroup2 path of ``pid`` (``/proc/PID/cgroup``, the ``0::`` line), or None."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


@dataclass
class RunCgroup:
    """The cgroup of one stack of a run: ``CGROUP2/stackfs/RUN/PID-N``."""

    run_id: str
    path: Path

    @classmethod
    def create(cls, run_id: str) -> RunCgroup | None:
        """Make a fresh cgroup for a stack of ``run_id``; None where runs get none
        (:func:`unavailable` says why)."""
        run = run_path(run_id)
        if run is None:
            return None
        for _ in range(5):  # another stack of the run may rmdir RUN between our two mkdirs
            with contextlib.suppress(FileExistsError):
                os.mkdir(run, 0o755)
            leaf = run / f"{os.getpid()}-{next(_counter)}"
            try:
                os.mkdir(leaf, 0o755)
            except FileNotFoundError:
                continue
            except FileExistsError:
                continue
            _check_ours(run)
            return cls(run_id, leaf)
        raise CgroupError(f"could not create a cgroup under {run}")

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run so that the process joins this cgroup before it execs (same pid)."""
        script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["/bin/sh", "-c", script, str(self.path), *argv]

    def pids(self) -> set[int]:
        return pids_under(self.path)

    def kill(self, timeout: float = 5.0) -> set[int]:
        return kill(self.path, timeout)

    def remove(self) -> bool:
        """Remove this stack's cgroup, and the run's when it was the last of it."""
        ok = remove(self.path)
        if ok:
            _rmdir(self.path.parent)
        return ok
