"""Whiteouts, opaque directories and directory redirects in aufs form.

* ``.wh.NAME`` in a branch directory hides ``NAME`` in every branch below (aufs ``au_wh_test``).
* ``.wh..wh..opq`` in a branch directory makes it opaque: nothing below is merged in
  (aufs ``AUFS_WH_DIROPQ``, ``au_diropq_test``).
* ``.wh..wh..redir`` holds a path: the branches below see this directory at that path instead of
  its own name. This is how a directory that exists in a lower branch is renamed without
  EXDEV and without copying its files (the idea of overlayfs' ``redirect_dir``, kept in aufs
  form: a hidden meta file that moves with the directory and survives a remount).

Every name that begins with ``.wh.`` is the union's own: never listed, and refused by lookup with
EPERM, as aufs' ``au_test_shwh`` does. Names longer than :data:`NAME_MAX` give ENAMETOOLONG,
because a whiteout of them would not fit in the branch (aufs ``AUFS_MAX_NAMELEN``).
"""

from __future__ import annotations

import errno
import os

from stackfs.union.branches import Branch, Path

WH_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"
REDIRECT = b".wh..wh..redir"
#: the hidden work directory of the aufs syntax (UPPER/.wh..wh.stackfs)
WORKDIR_NAME = ".wh..wh.stackfs"
#: a branch's NAME_MAX less the whiteout prefix
BRANCH_NAME_MAX = 255
NAME_MAX = BRANCH_NAME_MAX - len(WH_PREFIX)


def is_reserved(name: bytes) -> bool:
    """``name`` belongs to the union (whiteouts, meta files): hidden and refused."""
    return name.startswith(WH_PREFIX)


def check_name(name: bytes) -> None:
    """Refuse names the union cannot represent (EPERM for ``.wh.*``, ENAMETOOLONG)."""
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long for a union (NAME_MAX less '.wh.')")
    if name.startswith(WH_PREFIX):
        raise OSError(errno.EPERM, "names beginning with .wh. are the union's own")


def wh_name(name: bytes) -> bytes:
    return WH_PREFIX + name


def has_whiteout(br: Branch, parent: Path, name: bytes) -> bool:
    return br.meta_exists(parent + (WH_PREFIX + name,))


def make_whiteout(br: Branch, parent: Path, name: bytes) -> None:
    """Create ``.wh.NAME`` in ``parent`` (an empty, mode 0444 file, like aufs' WH_MASK)."""
    try:
        fd = br.open(parent + (WH_PREFIX + name,), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        return
    os.close(fd)


def remove_whiteout(br: Branch, parent: Path, name: bytes) -> bool:
    """Remove ``.wh.NAME`` if it is there; True if it was."""
    try:
        br.unlink(parent + (WH_PREFIX + name,))
    except FileNotFoundError:
        return False
    return True


def is_opaque(br: Branch, path: Path) -> bool:
    return br.meta_exists(path + (OPAQUE,))


def make_opaque(br: Branch, path: Path) -> None:
    try:
        fd = br.open(path + (OPAQUE,), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        return
    os.close(fd)


def read_redirect(br: Branch, path: Path) -> Path | None:
    """The lower path recorded in directory ``path``, or None."""
    try:
        fd = br.open(path + (REDIRECT,), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if not data.startswith(b"/"):
        return None
    return tuple(c for c in data.rstrip(b"\n").split(b"/") if c)


def write_redirect(br: Branch, path: Path, target: Path) -> None:
    """Record (atomically) that the branches below see directory ``path`` at ``target``."""
    tmp = path + (REDIRECT + b".tmp",)
    fd = br.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    try:
        os.write(fd, b"/" + b"/".join(target) + b"\n")
    finally:
        os.close(fd)
    br.rename(tmp, br, path + (REDIRECT,))


def clear_dir(br: Branch, path: Path) -> None:
    """Remove the union's meta entries (whiteouts, markers) from an upper directory that looks
    empty through the union, so that it can be removed (aufs ``au_whtmp_rmdir``)."""
    for name in br.listdir(path):
        if name.startswith(WH_PREFIX):
            br.unlink(path + (name,))
