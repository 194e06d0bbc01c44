"""Whiteouts, opaque directories and directory redirects in aufs form.

* ``.wh.NAME`` in a branch directory hides ``NAME`` in every branch below (aufs ``au_wh_test``).
* ``.wh..wh..opq`` in a branch directory makes it opaque: nothing below is merged in
  (aufs ``AUFS_WH_DIROPQ``, ``au_diropq_test``).
* ``.wh..wh..redir`` holds a path: the branches below see this directory at that path instead of
  its own name. This is how a directory that exists in a lower branch is renamed without
  EXDEV and without copying its files (the idea of overlayfs' ``redirect_dir``, kept in aufs
  form: a hidden meta file that moves with the directory and survives a remount).

overlayfs' forms are read in every branch, so an OCI image's unpacked layers (or an overlayfs
upper directory) stack as they are: a character device 0/0 is a whiteout of its name
(``ovl_is_whiteout``), ``trusted.overlay.opaque`` = ``y`` makes a directory opaque and
``trusted.overlay.redirect`` is a redirect. Only the one namespace overlayfs would read is
metadata: ``trusted.overlay.*`` (only root can write it), or ``user.overlay.*`` when the union
is mounted with ``userxattr`` (:attr:`Branch.userxattr`, overlayfs' option of that name; then,
as there, an xattr redirect is refused with EPERM, never followed); otherwise ``user.overlay.*``
is a user's own data, which any owner may set. The union writes
the aufs forms unless mounted with ``whiteout=overlay`` (:attr:`Branch.whiteout_style`): then a
whiteout is a 0/0 character device and an opaque directory gets ``overlay.opaque`` = ``y`` in
that namespace, as overlayfs writes them.

A redirect is a path the union will look up in the branches below, so it is checked as
overlayfs checks one (``ovl_get_redirect_xattr``, then ``lookup_one`` per component): an
absolute path without empty components, or one name with no ``/`` (EINVAL otherwise), and no
``.`` or ``..`` component (EACCES); the lookup then resolves it beneath the branch root and
follows no symlink (:meth:`Branch.lstat_beneath`). A bad redirect fails the directory's lookup,
as it does on overlayfs, and is logged (rate-limited, like its ``pr_warn_ratelimited``).

Every name that begins with ``.wh.`` is the union's own: never listed, and refused by lookup with
EPERM, as aufs' ``au_test_shwh`` does. Names longer than :data:`NAME_MAX` give ENAMETOOLONG,
because a whiteout of them would not fit in the branch (aufs ``AUFS_MAX_NAMELEN``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time

from stackfs.union.branches import Branch, Path

WH_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"
REDIRECT = b".wh..wh..redir"
#: the hidden work directory of the aufs syntax (UPPER/.wh..wh.stackfs)
WORKDIR_NAME = ".wh..wh.stackfs"
#: a branch's NAME_MAX less the whiteout prefix
BRANCH_NAME_MAX = 255
NAME_MAX = BRANCH_NAME_MAX - len(WH_PREFIX)
#: overlayfs' xattr namespaces (trusted: the default; user: ``-o userxattr``)
TRUSTED_OVL = "trusted.overlay."
USER_OVL = "user.overlay."
#: the union's own trusted names (the cross-layer i_rwsem: :mod:`stackfs.runtime.crosslock`)
STACKFS_XATTR = "trusted.stackfs."
#: invalid redirects logged per interval (the kernel's printk ratelimit: 10 per 5 s)
_WARN_BURST, _WARN_INTERVAL = 10, 5.0
_warn_window = [0.0, 0]

log = logging.getLogger(__name__)


def ovl_prefix(br: Branch) -> str:
    """The overlayfs metadata namespace of ``br``: ``user.overlay.`` under ``userxattr``."""
    return USER_OVL if br.userxattr else TRUSTED_OVL


def meta_xattrs(userxattr: bool) -> tuple[str, ...]:
    """The union's own xattr names: never listed, read, set or removed through the union
    (EPERM), never copied up. ``trusted.overlay.*`` stays the union's in either mode (a
    remount without ``userxattr`` would read it); ``user.overlay.*`` only under ``userxattr``."""
    return (STACKFS_XATTR, TRUSTED_OVL, USER_OVL) if userxattr else (STACKFS_XATTR, TRUSTED_OVL)


def is_ovl_whiteout(st: os.stat_result) -> bool:
    """overlayfs' whiteout: a character device with device number 0/0 (``ovl_is_whiteout``)."""
    return stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _overlay_style(br: Branch) -> bool:
    return br.whiteout_style == "overlay"


def check_name(name: bytes) -> None:
    """Refuse names the union cannot represent (EPERM for ``.wh.*``, ENAMETOOLONG)."""
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long for a union (NAME_MAX less '.wh.')")
    if name.startswith(WH_PREFIX):
        raise OSError(errno.EPERM, "names beginning with .wh. are the union's own")


def has_whiteout(br: Branch, parent: Path, name: bytes) -> bool:
    """Is ``name`` whited out in ``br``, in either form?"""
    return br.meta_exists(parent + (WH_PREFIX + name,)) or has_ovl_whiteout(br, parent, name)


def has_ovl_whiteout(br: Branch, parent: Path, name: bytes) -> bool:
    """Is ``name`` an overlayfs whiteout in ``br`` (it takes the name: remove it before the
    name is made again)? Read whatever the style the union writes (an overlayfs upper)."""
    try:
        st = br.lstat(parent + (name,))
    except PermissionError:
        return False
    return st is not None and is_ovl_whiteout(st)


def takes_name(br: Branch) -> bool:
    """Does a whiteout written in ``br`` take the name itself (overlayfs form)? Then the object
    is removed first and the whiteout made after; aufs' ``.wh.NAME`` is made first."""
    return _overlay_style(br)


def free_name(br: Branch, parent: Path, name: bytes) -> None:
    """Before ``name`` is made again in ``br``: remove an overlayfs whiteout that holds it (an
    aufs ``.wh.NAME`` is removed after, so that the lower object never shows in between)."""
    if has_ovl_whiteout(br, parent, name):
        br.unlink(parent + (name,))


def make_whiteout(br: Branch, parent: Path, name: bytes) -> None:
    """Create ``.wh.NAME`` in ``parent`` (an empty, mode 0444 file, like aufs' WH_MASK); with
    ``whiteout=overlay`` a 0/0 character device at NAME (the name must be free)."""
    if _overlay_style(br):
        try:
            br.mknod(parent + (name,), stat_mod.S_IFCHR | 0o000, 0)
        except FileExistsError:
            pass
        return
    try:
        fd = br.open(parent + (WH_PREFIX + name,), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        return
    os.close(fd)


def remove_whiteout(br: Branch, parent: Path, name: bytes) -> bool:
    """Remove ``.wh.NAME`` (or an overlayfs whiteout at NAME) if it is there; True if it was."""
    if has_ovl_whiteout(br, parent, name):
        br.unlink(parent + (name,))
        return True
    try:
        br.unlink(parent + (WH_PREFIX + name,))
    except FileNotFoundError:
        return False
    return True


def _ovl_xattrs(br: Branch, path: Path) -> list[str]:
    """The overlayfs xattrs of ``path`` in ``br``'s namespace (one listxattr; none on a branch
    without xattrs)."""
    try:
        names = br.listxattr(path)
    except OSError:
        return []
    prefix = ovl_prefix(br)
    return [n for n in names if n.startswith(prefix)]


def _ovl_value(br: Branch, path: Path, names: list[str], key: str) -> bytes | None:
    wanted = ovl_prefix(br) + key
    if wanted in names:
        try:
            return br.getxattr(path, os.fsencode(wanted))
        except OSError:
            return None
    return None


def dir_meta(br: Branch, path: Path) -> tuple[bool, Path | None]:
    """(opaque, redirect) of directory ``path`` in ``br``, in aufs or overlayfs form."""
    opaque = br.meta_exists(path + (OPAQUE,))
    redirect = None if opaque else read_redirect(br, path)
    if not opaque and redirect is None:
        names = _ovl_xattrs(br, path)
        if names:
            opaque = _ovl_value(br, path, names, "opaque") == b"y"
            if not opaque:
                redirect = _ovl_redirect(br, path, names)
    return opaque, redirect


def make_opaque(br: Branch, path: Path) -> None:
    if _overlay_style(br):
        br.setxattr(path, os.fsencode(ovl_prefix(br) + "opaque"), b"y")
        return
    try:
        fd = br.open(path + (OPAQUE,), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        return
    os.close(fd)


def _invalid_redirect(br: Branch, path: Path, value: bytes, err: int, why: str) -> OSError:
    """Log (rate-limited) and return the error a bad redirect fails the lookup with."""
    now = time.monotonic()
    if now - _warn_window[0] > _WARN_INTERVAL:
        _warn_window[0], _warn_window[1] = now, 0
    if _warn_window[1] < _WARN_BURST:
        _warn_window[1] += 1
        where = os.path.join(br.path, os.fsdecode(b"/".join(path)))
        log.warning("invalid redirect (%r) in %s: %s", value, where, why)
    return OSError(err, f"invalid redirect: {why}")


def parse_redirect(br: Branch, path: Path, value: bytes, follow: bool = True) -> Path:
    """The branch path a redirect ``value`` on directory ``path`` names, checked as overlayfs
    checks one: ``/A/B`` (from the branch root, no empty component) or ``NAME`` (in the same
    parent; no ``/``), EINVAL otherwise (``ovl_get_redirect_xattr``); then EPERM if redirects
    are not followed (``follow``; overlayfs' ``redirect_dir=nofollow``, "refusing to follow
    redirect"); a ``.`` or ``..`` component is EACCES (``lookup_one`` refuses them), so a
    redirect never names a path outside its branch."""
    if not value or b"\0" in value:
        raise _invalid_redirect(br, path, value, errno.EINVAL, "empty or holds a NUL")
    if value.startswith(b"/"):
        parts = tuple(value[1:].split(b"/"))
        if not all(parts):
            raise _invalid_redirect(br, path, value, errno.EINVAL, "empty path component")
        target = parts
    else:
        if b"/" in value:
            raise _invalid_redirect(br, path, value, errno.EINVAL, "a relative path with a /")
        parts = (value,)
        target = path[:-1] + parts
    if not follow:
        raise _invalid_redirect(br, path, value, errno.EPERM, "refusing to follow (userxattr)")
    if any(c in (b".", b"..") for c in parts):
        raise _invalid_redirect(br, path, value, errno.EACCES, "a . or .. component")
    return target


def _ovl_redirect(br: Branch, path: Path, names: list[str]) -> Path | None:
    """overlayfs' ``redirect`` xattr: an absolute path from the layer root or a name in the
    same parent directory. Never followed under ``userxattr``: overlayfs' ``userxattr``
    implies ``redirect_dir=nofollow`` and refuses ``redirect_dir=follow`` (a user who owns
    the upper could otherwise point a directory at any lower one)."""
    v = _ovl_value(br, path, names, "redirect")
    if v is None:
        return None
    return parse_redirect(br, path, v, follow=not br.userxattr)


def read_redirect(br: Branch, path: Path) -> Path | None:
    """The lower path recorded in directory ``path`` in aufs form (``.wh..wh..redir``: always
    absolute), or None."""
    try:
        fd = br.open(path + (REDIRECT,), os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _invalid_redirect(br, path, b"", errno.EINVAL, "a symlink") from None
        raise
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    data = data.rstrip(b"\n")
    if not data.startswith(b"/"):
        raise _invalid_redirect(br, path, data, errno.EINVAL, "not an absolute path")
    return parse_redirect(br, path, data)


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
        elif has_ovl_whiteout(br, path, name):
            br.unlink(path + (name,))
