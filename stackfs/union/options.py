"""Mount options of the union: parse ``-o`` strings and validate the branch set.

Two spellings of the branch set are accepted, as the issue asks:

* aufs: ``br=UPPER=rw:LOWER1=ro:LOWER2=ro`` (``br:`` too), leftmost branch on top. A branch
  without a permission is ``rw`` when it is the first one, ``ro`` otherwise (aufs'
  ``au_br_perm``). The work directory is then ``UPPER/.wh..wh.stackfs`` (aufs keeps its own
  ``.wh..wh.plnk``/``.wh..wh.orph`` inside the branch too): hidden by the whiteout prefix and
  always on the upper's filesystem.
* overlayfs: ``lowerdir=L1:L2,upperdir=U,workdir=W``.

Validation happens before anything is mounted (``stackfs mount`` calls it in the parent, the
daemon again): every error is one line that names the problem (:class:`OptionError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from stackfs.union import whiteout

COPYUP_MODES = ("plain", "aufs", "aufs-unlock")
#: the form of the whiteouts and opaque markers written in the upper branch (both are read)
WHITEOUT_STYLES = ("aufs", "overlay")
#: generic mount(8)/fstab options that mean nothing to the union (accepted and ignored).
IGNORED = {
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "allow_other",
    "default_permissions",
    "silent",
    "loud",
    "lazytime",
    "nolazytime",
}
#: how many branches the inode-number scheme (xino.SHIFT) can tell apart.
MAX_BRANCHES = 30


class OptionError(ValueError):
    """A bad mount option or branch set; the message is one line."""


@dataclass
class BranchSpec:
    """One branch as given on the command line."""

    path: str
    writable: bool


@dataclass
class UnionOptions:
    """Everything ``-o`` said, validated."""

    branches: list[BranchSpec] = field(default_factory=list)
    workdir: str | None = None
    #: the workdir is the hidden UPPER/.wh..wh.stackfs of the aufs syntax (created on demand)
    workdir_in_upper: bool = False
    entry_timeout: float = 5.0
    attr_timeout: float = 5.0
    negative_timeout: float | None = None
    copyup: str = "plain"
    #: ``whiteout=``: aufs (``.wh.NAME``) or overlay (0/0 character devices, xattrs)
    whiteout: str = "aufs"
    inject: list[str] = field(default_factory=list)
    read_only: bool = False
    debug: bool = False
    max_tasks: int = 64
    #: the kernel's fast paths (issue 15, :mod:`stackfs.union.fastpath`): answer ENOSYS to OPEN
    #: (no OPEN/RELEASE; copy-up at the first write or truncate instead of at open), to OPENDIR
    #: (no OPENDIR/RELEASEDIR), have the kernel cache listings (FOPEN_CACHE_DIR), and let the
    #: kernel cache writes (FUSE_CAP_WRITEBACK_CACHE, off by default); ``fastpath=off`` turns
    #: all of them off, and ``read_ahead_kb`` too
    no_open: bool = True
    no_opendir: bool = True
    cache_dir: bool = True
    #: off by default: with 1 MiB writes it saves no request and adds a SETATTR (the kernel's
    #: mtime) per written file at close or eviction, and a failed copy-up shows at close(2)
    writeback_cache: bool = False
    #: the readahead of the union's own FUSE bdi (KiB; 0: the kernel's 128): sequential reads
    #: then come in READs of up to 1 MiB instead of 128 KiB
    read_ahead_kb: int = 1024

    @property
    def upper(self) -> BranchSpec | None:
        return self.branches[0] if self.branches and self.branches[0].writable else None


def split_commas(texts: list[str]) -> list[str]:
    """Split ``-o`` strings at commas (every value we take is comma-free)."""
    out: list[str] = []
    for t in texts:
        out.extend(p.strip() for p in t.split(",") if p.strip())
    return out


def _seconds(key: str, value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise OptionError(f"bad value for {key}: {value!r} (seconds expected)") from None
    if v < 0 or v != v:
        raise OptionError(f"bad value for {key}: {value!r} (seconds expected)")
    return v


def _on_off(key: str, value: str) -> bool:
    if value in ("", "on", "1", "yes"):
        return True
    if value in ("off", "0", "no"):
        return False
    raise OptionError(f"bad value for {key}: {value!r} (on or off)")


def _parse_br(value: str) -> list[BranchSpec]:
    """aufs ``br=DIR[=PERM]:DIR[=PERM]...``"""
    out = []
    for i, part in enumerate(p for p in value.split(":")):
        if not part:
            raise OptionError(f"empty branch in br={value!r}")
        path, _, perm = part.rpartition("=") if "=" in part else (part, "", "")
        perm = perm or ("rw" if i == 0 else "ro")
        base = perm.split("+")[0]
        if base not in ("rw", "ro", "rr"):
            raise OptionError(f"bad branch permission {perm!r} for {path} (rw, ro or rr)")
        out.append(BranchSpec(path, base == "rw"))
    return out


def parse(texts: list[str]) -> UnionOptions:
    """Parse the ``-o`` strings (without validating the directories)."""
    o = UnionOptions()
    br: list[BranchSpec] | None = None
    lower: list[str] | None = None
    upper: str | None = None
    for item in split_commas(texts):
        key, eq, value = item.partition("=")
        if key in ("br", "dirs") or item.startswith("br:"):
            if item.startswith("br:"):
                value = item[3:]
            if br is not None:
                raise OptionError("br given twice")
            br = _parse_br(value)
        elif key == "lowerdir":
            if not value:
                raise OptionError("lowerdir is empty")
            lower = value.split(":")
            if any(not p for p in lower):
                raise OptionError(f"empty branch in lowerdir={value!r}")
        elif key == "upperdir":
            upper = value or None
            if upper is None:
                raise OptionError("upperdir is empty")
        elif key == "workdir":
            if not value:
                raise OptionError("workdir is empty")
            o.workdir = value
        elif key in ("entry_timeout", "attr_timeout", "negative_timeout"):
            setattr(o, key, _seconds(key, value))
        elif key == "timeout":
            o.entry_timeout = o.attr_timeout = _seconds(key, value)
        elif key == "whiteout":
            if value not in WHITEOUT_STYLES:
                raise OptionError(f"bad whiteout={value!r} (one of {', '.join(WHITEOUT_STYLES)})")
            o.whiteout = value
        elif key == "copyup":
            if value not in COPYUP_MODES:
                raise OptionError(f"bad copyup={value!r} (one of {', '.join(COPYUP_MODES)})")
            o.copyup = value
        elif key == "inject":
            if "=" not in value:
                raise OptionError(f"bad inject={value!r} (POINT=ACTION expected)")
            o.inject.append(value)
        elif key in ("no_open", "no_opendir", "cache_dir", "writeback_cache"):
            setattr(o, key, _on_off(key, value))
        elif key == "fastpath":
            on = _on_off(key, value)
            o.no_open = o.no_opendir = o.cache_dir = on
            if not on:
                o.writeback_cache, o.read_ahead_kb = False, 0
        elif key == "read_ahead_kb":
            try:
                o.read_ahead_kb = int(value)
            except ValueError:
                raise OptionError(f"bad value for read_ahead_kb: {value!r} (KiB)") from None
            if o.read_ahead_kb < 0:
                raise OptionError(f"bad value for read_ahead_kb: {value!r} (KiB)")
        elif key == "max_tasks":
            try:
                o.max_tasks = int(value)
            except ValueError:
                raise OptionError(f"bad value for max_tasks: {value!r}") from None
        elif item == "ro":
            o.read_only = True
        elif item == "rw":
            o.read_only = False
        elif item == "debug":
            o.debug = True
        elif item in IGNORED or key.startswith("x-") or key.startswith("comment"):
            continue
        else:
            raise OptionError(f"unknown option {item!r}")
    if br is not None and (lower is not None or upper is not None):
        raise OptionError("give either br= (aufs) or lowerdir=/upperdir= (overlayfs), not both")
    if br is not None:
        o.branches = br
        if o.workdir is None and br[0].writable:
            o.workdir_in_upper = True
    elif lower is not None:
        if upper is not None:
            o.branches.append(BranchSpec(upper, True))
        o.branches.extend(BranchSpec(p, False) for p in lower)
        if upper is not None and o.workdir is None:
            raise OptionError("upperdir needs a workdir")
        if upper is None and o.workdir is not None:
            raise OptionError("workdir given without upperdir")
    elif upper is not None:
        raise OptionError("upperdir needs lowerdir")
    else:
        raise OptionError("no branches: give -o br=UPPER=rw:LOWER=ro or -o lowerdir=...")
    return o


def _inside(a: str, b: str) -> bool:
    """``a`` is ``b`` or below it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def validate(o: UnionOptions, mountpoint: str | None = None) -> UnionOptions:
    """Resolve and check the branches; raise :class:`OptionError` naming the first problem."""
    if len(o.branches) > MAX_BRANCHES:
        raise OptionError(f"too many branches ({len(o.branches)}, at most {MAX_BRANCHES})")
    for i, b in enumerate(o.branches):
        if b.writable and i != 0:
            raise OptionError(f"branch {b.path}: only the leftmost (top) branch can be rw")
        if not os.path.exists(b.path):
            raise OptionError(f"branch {b.path}: no such directory")
        if not os.path.isdir(b.path):
            raise OptionError(f"branch {b.path}: not a directory")
        b.path = os.path.realpath(b.path)
    for i, a in enumerate(o.branches):
        for b in o.branches[i + 1 :]:
            if _inside(a.path, b.path) or _inside(b.path, a.path):
                raise OptionError(f"branches {a.path} and {b.path} overlap")
    if o.read_only and o.upper is not None:
        o.branches[0].writable = False
        o.workdir, o.workdir_in_upper = None, False
    up = o.upper
    if up is not None:
        if o.workdir_in_upper:
            o.workdir = os.path.join(up.path, whiteout.WORKDIR_NAME)
        else:
            assert o.workdir is not None
            if not os.path.isdir(o.workdir):
                raise OptionError(f"workdir {o.workdir}: no such directory")
            o.workdir = os.path.realpath(o.workdir)
            if os.stat(o.workdir).st_dev != os.stat(up.path).st_dev:
                raise OptionError(
                    f"workdir {o.workdir} is on a different filesystem than upperdir {up.path}"
                )
            for b in o.branches:
                if _inside(o.workdir, b.path) or _inside(b.path, o.workdir):
                    raise OptionError(f"workdir {o.workdir} and branch {b.path} overlap")
        if not os.access(up.path, os.W_OK):
            raise OptionError(f"upper branch {up.path} is not writable")
    if mountpoint is not None:
        if not os.path.isdir(mountpoint):
            raise OptionError(f"mount point {mountpoint}: no such directory")
        mp = os.path.realpath(mountpoint)
        for b in o.branches:
            if b.writable and _inside(b.path, mp) and b.path != mp:
                raise OptionError(f"upper branch {b.path} is inside the mount point {mp}")
    return o
