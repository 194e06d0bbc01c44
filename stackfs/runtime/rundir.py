"""The run directory: ``/run/stackfs/PID/`` holds each daemon's ``info.json`` and control socket.

``STACKFS_RUN_DIR`` moves the root (tests use it to keep runs apart). After a SIGKILL the
directory stays behind, which is how ``stackfs cleanup`` knows what a dead daemon served.

Root reads what is in here and acts on it, so nothing in here may be anyone else's (issue 21):

* the root is a real directory (not a symbolic link) owned by the daemons' user (root), mode
  0755 whatever the umask (the daemons run with ``umask(0)``, see ``backends/cli.py``), under
  parents only root can change (or sticky ones, like ``/tmp``). A root of ours that others can
  write (what older versions made: 0777) is put back to 0755; one that is not ours is refused;
* ``PID/`` is 0700 and made with ``mkdir`` (which fails if anything is there): something there
  that is not ours (a symbolic link, another owner) is refused; a directory of ours left by a
  dead process that had our pid is replaced;
* a file is written as ``NAME.tmp`` opened ``O_CREAT|O_EXCL|O_NOFOLLOW`` with an explicit
  mode, then renamed over ``NAME``, inside that directory;
* a reader trusts ``PID/info.json`` only when the root checks out, the directory and the file
  are ours, the file is a regular file, and it names ``PID``.

A file in here is never proof enough to signal a process: :mod:`stackfs.runtime.daemonid` checks the
process itself.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import psutil

from stackfs.linux import proc

#: the root: anyone may list the pids in it (the fsnames in /proc/self/mountinfo say as much),
#: only root may change it
ROOT_MODE = 0o755
#: a daemon's directory and files: root's alone (the control socket takes ``inject``)
DIR_MODE = 0o700
FILE_MODE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_INFO = 1 << 20


class RunDirError(Exception):
    """The run directory (or a daemon's directory in it) cannot be trusted; one line."""


def root() -> Path:
    """``$STACKFS_RUN_DIR`` or ``/run/stackfs``, its parent resolved (the root itself is never
    followed), so that every path named in it is the one a daemon bound its sockets at."""
    wanted = Path(os.environ.get("STACKFS_RUN_DIR", "/run/stackfs"))
    return Path(os.path.realpath(wanted.parent)) / wanted.name


def daemon_dir(pid: int) -> Path:
    return root() / str(pid)


def run_id() -> str | None:
    """The run this process belongs to (``STACKFS_RUN_ID``), inherited by the daemons it starts."""
    return os.environ.get("STACKFS_RUN_ID") or None


def _others_can_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o022)


def _trusted_owner(uid: int) -> bool:
    """Root's or ours: no one else's (a non-root reader, such as the in-process test tier run
    as nobody, trusts what root's daemons wrote as it trusts the rest of the system)."""
    return uid in (0, os.geteuid())


def _ours(st: os.stat_result) -> bool:
    return _trusted_owner(st.st_uid) and not _others_can_write(st)


def _check_parents(top: Path) -> None:
    """Every directory above the root must be root's (or ours), and writable by nobody else
    unless sticky: else another user could rename the root away and put their own there."""
    for d in top.parents:
        st = os.stat(d)
        if not _trusted_owner(st.st_uid) or (
            _others_can_write(st) and not st.st_mode & stat.S_ISVTX
        ):
            raise RunDirError(
                f"run directory {top}: its parent {d} (uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}) can be changed by other users; refusing to use it"
            )


def _make_parents(top: Path) -> None:
    """Create the missing directories above the root, 0755 each (not ``0777 & ~umask``)."""
    missing = [d for d in top.parents if not d.exists()]
    for d in reversed(missing):
        try:
            os.mkdir(d, ROOT_MODE)
        except FileExistsError:
            continue
        _set_dir_mode(d, ROOT_MODE)


def _set_dir_mode(path: Path, mode: int) -> None:
    """``chmod`` a directory we made to exactly ``mode`` (the umask took bits away, or none),
    through an fd opened without following a link; it must still be ours."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise RunDirError(f"{path} is not ours: refusing to use it")
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def check_root(create: bool = False) -> Path:
    """The run root, checked (and made, with ``create``); :class:`RunDirError` when it cannot be
    trusted. A root that does not exist (and is not to be made) is fine: nothing to trust."""
    top = root()
    try:
        if not create and not os.path.lexists(top):
            return top
        if create:
            _make_parents(top)
        _check_parents(top)
        made = False
        if create:
            try:
                os.mkdir(top, ROOT_MODE)
                made = True
            except FileExistsError:
                pass
        fd = os.open(top, _DIR_FLAGS)
        try:
            st = os.fstat(fd)
            if not _trusted_owner(st.st_uid):
                raise RunDirError(
                    f"run directory {top} belongs to uid {st.st_uid}, not root or "
                    f"{os.geteuid()}: refusing to use it (remove it)"
                )
            if made or _others_can_write(st) or st.st_mode & stat.S_ISVTX:
                os.fchmod(fd, ROOT_MODE)  # ours: what is planted in it is checked entry by entry
        finally:
            os.close(fd)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY|O_NOFOLLOW on a link: ENOTDIR
            why = "is a symbolic link" if os.path.islink(top) else "is not a directory"
        raise RunDirError(f"run directory {top}: {why}; refusing to use it") from None
    return top


def _trusted_root() -> Path | None:
    """The root if it can be trusted (for readers: they never make or fix anything but the
    root's mode, and see nothing when it is not to be trusted)."""
    try:
        return check_root()
    except RunDirError:
        return None


def _own_dir(path: Path) -> None:
    """Raise unless ``path`` is a real directory of ours (never follows a symbolic link)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise RunDirError(f"{path} is a symbolic link: refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"{path} is not a directory: refusing to use it")
    if st.st_uid != os.geteuid():
        raise RunDirError(f"{path} belongs to uid {st.st_uid}: refusing to use it")


#: pids whose directory this process made (a daemon writes its info.json twice)
_made: set[int] = set()


def make_daemon_dir(pid: int) -> Path:
    """``RUN_DIR/PID``, 0700, made by this process (see the module's rules)."""
    top = check_root(create=True)
    path = top / str(pid)
    try:
        if pid in _made:
            _own_dir(path)
            return path
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            _own_dir(path)
            if pid != os.getpid() and proc.alive(pid):
                raise RunDirError(f"{path} belongs to the live process {pid}") from None
            shutil.rmtree(path)  # left by a dead process that had this pid
            os.mkdir(path, DIR_MODE)
        _set_dir_mode(path, DIR_MODE)
    except OSError as exc:
        raise RunDirError(f"{path}: {exc.strerror or exc}") from None
    _made.add(pid)
    return path


def _write_new(d: Path, name: str, data: bytes, mode: int) -> None:
    """Write ``d/name`` as a new file of ``mode`` (``name.tmp``, then renamed over ``name``)."""
    dfd = os.open(d, _DIR_FLAGS)
    try:
        tmp = name + ".tmp"
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dfd,
        )
        try:
            os.fchmod(fd, mode)  # the daemons run with umask(0); the mode is ours to say
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def self_identity() -> dict[str, Any]:
    """What :mod:`stackfs.runtime.daemonid` compares later: this process's ``starttime`` (clock
    ticks
    since boot, ``/proc/self/stat``) and its command line as the kernel has it."""
    return {"start_ticks": proc.start_ticks(os.getpid()), "cmdline": psutil.Process().cmdline()}


def write_info(pid: int, info: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/PID/info.json`` (``pid`` is this process); returns ``RUN_DIR/PID``.
    :class:`RunDirError` when the run directory cannot be trusted."""
    d = make_daemon_dir(pid)
    record = {**info, **self_identity()} if pid == os.getpid() else dict(info)
    try:
        _write_new(d, "info.json", json.dumps(record, indent=1).encode(), FILE_MODE)
    except OSError as exc:
        raise RunDirError(f"{d}/info.json: {exc.strerror or exc}") from None
    return d


def _read_info(top: Path, pid: int) -> dict[str, Any] | None:
    try:
        dfd = os.open(top / str(pid), _DIR_FLAGS)
    except OSError:
        return None
    try:
        if not _ours(os.fstat(dfd)):
            return None
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no FIFO waits
        fd = os.open("info.json", flags, dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or not _ours(st):
                return None
            info = json.loads(f.read(_MAX_INFO))
    except (OSError, ValueError):
        return None
    finally:
        os.close(dfd)
    return info if isinstance(info, dict) and info.get("pid") == pid else None


def read_info(pid: int) -> dict[str, Any] | None:
    """``RUN_DIR/PID/info.json`` if it can be trusted (see the module's rules), else None."""
    top = _trusted_root()
    return _read_info(top, pid) if top is not None else None


def remove(pid: int) -> None:
    """Remove ``RUN_DIR/PID`` if it is ours (nothing of anyone else's, nothing through a link)."""
    _made.discard(pid)
    top = _trusted_root()
    if top is None:
        return
    try:
        _own_dir(top / str(pid))
    except (OSError, RunDirError):
        return
    shutil.rmtree(top / str(pid), ignore_errors=True)


def all_infos() -> dict[int, dict[str, Any]]:
    """pid -> info of every trusted ``RUN_DIR/PID/info.json``."""
    out: dict[int, dict[str, Any]] = {}
    top = _trusted_root()
    if top is None:
        return out
    try:
        names = os.listdir(top)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            info = _read_info(top, int(name))
            if info is not None:
                out[int(name)] = info
    return out


def dead_without_info() -> list[int]:
    """pids of ``RUN_DIR/PID`` directories of ours with no trusted ``info.json`` whose process
    is gone: a daemon that died between making its directory and writing its file (killed while
    starting). Nobody's: no run can claim them, so any cleanup may remove them."""
    top = _trusted_root()
    if top is None:
        return []
    try:
        names = os.listdir(top)
    except OSError:
        return []
    return [
        int(n)
        for n in names
        if n.isdigit() and _read_info(top, int(n)) is None and not proc.alive(int(n))
    ]
