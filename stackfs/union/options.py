"""Mount options of the union: parse ``-o`` strings and validate the branch set.

Two spellings of the branch set are accepted, as the issue asks:

* aufs: ``br=UPPER=rw:LOWER1=ro:LOWER2=ro`` (``br:`` too), leftmost branch on top. A branch
  without a permission is ``rw`` when it is the first one, ``ro`` otherwise (aufs'
  ``au_br_perm``). The work directory is then ``UPPER/.wh..wh.stackfs`` (aufs keeps its own
  ``.wh..wh.plnk``/``.wh..wh.orph`` inside the branch too): hidden by the whiteout prefix and
  always on the upper's filesystem.
* overlayfs: ``lowerdir=L1:L2,upperdir=U,workdir=W``.

Each branch option is given once. A path may carry a ``,`` ``:`` ``=`` or ``\\`` escaped with a
backslash (``\\,``), as overlayfs reads its options (``ovl_next_opt`` splits at unescaped commas,
the lowerdir split at unescaped colons, ``ovl_unescape`` drops the backslashes) and
fuse-overlayfs too. mount(8) (util-linux 2.38 here) hands such options to the helper unchanged,
from fstab too; there an octal ``\\054`` is unmangled into a bare comma before the split.

Generic mount flags (:data:`MOUNT_FLAGS`) go to the kernel mount: libfuse's ``fuse_kern_mount``
turns them into mount(2) flags (verified here, libfuse 3.14 on 6.18: ``noexec`` shows in
/proc/self/mountinfo and execve of a file in the union fails with EACCES; ``sync`` and
``dirsync`` show in the superblock options). libfuse refuses the flags it cannot set
(``strictatime``, ``nodiratime``, ``lazytime``, ``nosymfollow``, ...: "unknown option"), and so
does the union, by name. ``ro`` is one thing: the union drops its upper branch (EROFS from the
union) and the kernel mount is read-only (EROFS from the VFS, before any request).

Validation happens before anything is mounted (``stackfs mount`` calls it in the parent, the
daemon again): every error is one line that names the problem (:class:`OptionError`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from stackfs.optvalue import OptionError as OptionError  # part of this module's interface
from stackfs.optvalue import integer, seconds
from stackfs.union import whiteout

COPYUP_MODES = ("plain", "aufs", "aufs-unlock")
#: the form of the whiteouts and opaque markers written in the upper branch (both are read)
WHITEOUT_STYLES = ("aufs", "overlay")
#: mount(8)/fstab options that userspace acts on, or that every union mount has already
#: (``allow_other``, ``default_permissions``; ``silent``/``loud`` only quieten mount-time
#: kernel messages): accepted, not passed on.
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
    "allow_other",
    "default_permissions",
    "silent",
    "loud",
}
#: generic mount flags for the kernel mount: word -> (the setting it is part of, the word
#: libfuse's ``mount_flags`` table knows for it, None when the mount is that way already: the
#: kernel's default relatime and diratime); the last word given for a setting wins
MOUNT_FLAGS: dict[str, tuple[str, str | None]] = {
    "dev": ("dev", "dev"),
    "nodev": ("dev", "nodev"),
    "exec": ("exec", "exec"),
    "noexec": ("exec", "noexec"),
    "suid": ("suid", "suid"),
    "nosuid": ("suid", "nosuid"),
    "async": ("sync", "async"),
    "sync": ("sync", "sync"),
    "dirsync": ("dirsync", "dirsync"),
    "atime": ("atime", "atime"),
    "noatime": ("atime", "noatime"),
    "relatime": ("atime", "atime"),
    "nostrictatime": ("atime", "atime"),
    "diratime": ("diratime", None),
    "nolazytime": ("lazytime", None),
    "symfollow": ("symfollow", None),
}
#: generic flags a FUSE mount cannot have through libfuse 3.14 (it answers "unknown option"):
#: refused by name, never dropped
UNSUPPORTED_FLAGS = {
    "strictatime",
    "norelatime",
    "nodiratime",
    "lazytime",
    "nosymfollow",
    "mand",
    "nomand",
    "iversion",
    "noiversion",
}
#: ``max_tasks``: at least one request served at a time, at most as many as a FUSE_INIT
#: reply's ``max_background`` (a u16) can let the kernel queue in the background
MAX_TASKS = 65535
#: ``read_ahead_kb``: the kernel's bdi takes any unsigned long, but a file's readahead state
#: holds 32 bits of pages; 1 GiB per window is already far past any use
MAX_READ_AHEAD_KB = 1 << 20
#: the options that name a directory (their values may carry backslash escapes)
PATH_OPTIONS = ("br", "dirs", "lowerdir", "upperdir", "workdir")
#: how many branches the inode-number scheme (xino.SHIFT) can tell apart.
MAX_BRANCHES = 30


@dataclass
class BranchSpec:
    """One branch as given on the command line."""

    path: str
    writable: bool
    #: the option that named it (``br``, ``lowerdir``, ``upperdir``): errors name it
    option: str = "br"


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
    #: overlayfs' ``userxattr``: ``user.overlay.*`` is the overlayfs metadata namespace (else
    #: ``trusted.overlay.*``, and ``user.overlay.*`` is ordinary user data); see docs/security.md
    userxattr: bool = False
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
    #: the generic mount flags given (:data:`MOUNT_FLAGS`): setting -> libfuse word
    flags: dict[str, str | None] = field(default_factory=dict)

    def mount_flags(self) -> list[str]:
        """The generic flags for the kernel mount, as libfuse spells them; ``ro`` is not
        among them: it follows whether the union has an upper branch (``stackfs.union.cli``)."""
        return [w for w in self.flags.values() if w]

    @property
    def upper(self) -> BranchSpec | None:
        return self.branches[0] if self.branches and self.branches[0].writable else None


def split_unescaped(text: str, sep: str) -> list[str]:
    """Split ``text`` at every ``sep`` no backslash escapes, keeping the escapes (overlayfs'
    ``ovl_next_opt`` for commas; its lowerdir split for colons)."""
    parts: list[str] = []
    start = i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_commas(texts: list[str]) -> list[str]:
    """Split ``-o`` strings at the commas no backslash escapes."""
    out: list[str] = []
    for t in texts:
        out.extend(p.strip() for p in split_unescaped(t, ",") if p.strip())
    return out


def escape_path(path: str) -> str:
    """``path`` as a branch option value: ``\\``, ``,``, ``:`` and ``=`` backslash-escaped
    (the inverse of :func:`unescape_path`, as overlayfs' ``ovl_unescape`` reads them)."""
    return re.sub(r"([\\,:=])", r"\\\1", path)


def unescape_path(key: str, text: str) -> str:
    """A directory as ``key`` gave it: every ``\\X`` is X (overlayfs' ``ovl_unescape``)."""
    if not text:
        raise OptionError(f"{key}: empty path")
    if (len(text) - len(text.rstrip("\\"))) % 2:
        raise OptionError(f"{key}: {text!r} ends in a lone backslash")
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _on_off(key: str, value: str) -> bool:
    if value in ("", "on", "1", "yes"):
        return True
    if value in ("off", "0", "no"):
        return False
    raise OptionError(f"bad value for {key}: {value!r} (on or off)")


def _parse_br(value: str) -> list[BranchSpec]:
    """aufs ``br=DIR[=PERM]:DIR[=PERM]...``"""
    out = []
    for i, part in enumerate(split_unescaped(value, ":")):
        if not part:
            raise OptionError(f"br: empty branch in {value!r}")
        *dirs, perm = split_unescaped(part, "=")
        path = unescape_path("br", "=".join(dirs) if dirs else perm)
        perm = (perm if dirs else "") or ("rw" if i == 0 else "ro")
        base = perm.split("+")[0]
        if base not in ("rw", "ro", "rr"):
            raise OptionError(f"br: bad branch permission {perm!r} for {path} (rw, ro or rr)")
        out.append(BranchSpec(path, base == "rw", "br"))
    return out


def parse(texts: list[str]) -> UnionOptions:
    """Parse the ``-o`` strings (without validating the directories)."""
    o = UnionOptions()
    br: list[BranchSpec] | None = None
    lower: list[str] | None = None
    upper: str | None = None
    #: the branch options given so far, and the option before this one
    seen: set[str] = set()
    prev = ""
    for item in split_commas(texts):
        key, eq, value = item.partition("=")
        if item.startswith("br:"):
            key, value = "br", item[3:]
        if key in PATH_OPTIONS:
            name = "br" if key == "dirs" else key
            if name in seen:
                raise OptionError(f"{key} given twice")
            seen.add(name)
        if key in ("br", "dirs"):
            br = _parse_br(value)
        elif key == "lowerdir":
            if not value:
                raise OptionError("lowerdir is empty")
            lower = split_unescaped(value, ":")
            if any(not p for p in lower):
                raise OptionError(f"lowerdir: empty branch in {value!r}")
            lower = [unescape_path(key, p) for p in lower]
        elif key == "upperdir":
            if not value:
                raise OptionError("upperdir is empty")
            upper = unescape_path(key, value)
        elif key == "workdir":
            if not value:
                raise OptionError("workdir is empty")
            o.workdir = unescape_path(key, value)
        elif key in ("entry_timeout", "attr_timeout", "negative_timeout"):
            setattr(o, key, seconds(key, value))
        elif key == "timeout":
            o.entry_timeout = o.attr_timeout = seconds(key, value)
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
            o.read_ahead_kb = integer(key, value, 0, MAX_READ_AHEAD_KB, "KiB, ")
        elif key == "max_tasks":
            o.max_tasks = integer(key, value, 1, MAX_TASKS)
        elif item in MOUNT_FLAGS:
            setting, word = MOUNT_FLAGS[item]
            o.flags[setting] = word  # the last word given for a setting wins
        elif item in UNSUPPORTED_FLAGS:
            raise OptionError(f"{item}: a FUSE mount cannot have it (libfuse 3 refuses it too)")
        elif item == "ro":
            o.read_only = True
        elif item == "rw":
            o.read_only = False
        elif item == "userxattr":
            o.userxattr = True
        elif item == "debug":
            o.debug = True
        elif item in IGNORED or key.startswith("x-") or key.startswith("comment"):
            pass
        elif prev in PATH_OPTIONS and ("/" in item or not eq):
            raise OptionError(
                f"{prev}: unknown option {item!r} follows it (a comma in a path is written \\,)"
            )
        else:
            raise OptionError(f"unknown option {item!r}")
        prev = key
    if br is not None and (lower is not None or upper is not None):
        raise OptionError("give either br= (aufs) or lowerdir=/upperdir= (overlayfs), not both")
    if br is not None:
        o.branches = br
        if o.workdir is None and br[0].writable:
            o.workdir_in_upper = True
    elif lower is not None:
        if upper is not None:
            o.branches.append(BranchSpec(upper, True, "upperdir"))
        o.branches.extend(BranchSpec(p, False, "lowerdir") for p in lower)
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


def _ancestry(path: str) -> list[tuple[int, int]]:
    """``(st_dev, st_ino)`` of ``path`` and of every directory above it up to ``/``, ``path``
    first: the same directory seen through a bind mount (another path) has the same pair."""
    out = []
    while True:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino))
        if path == os.path.dirname(path):
            return out
        path = os.path.dirname(path)


def check_mountpoint(o: UnionOptions, mountpoint: str) -> None:
    """Refuse a mount point that is a branch or the work directory, lies inside one, or holds
    one: the daemon reaches its branches through paths, so a lookup below the mount point
    would come back to the union itself and wait for itself (issue 21 item 5: ``ls
    MP/sub`` in D state). Compared by directory identity (``st_dev``, ``st_ino``) along the
    resolved paths, so a symlink or a bind mount does not hide the overlap.

    overlayfs (6.18, verified here with ``mount -t overlay``) mounts all these cases (a mount
    point inside, equal to or holding a lower, the upper or the workdir): it looks its layers
    up by dentry without crossing mounts, so it sees the directories under its own mount and
    does not hang. What it refuses is layers that overlap each other: ``lowerdir=/l:/l/sub``
    fails with ELOOP, "overlayfs: overlapping lowerdir path" in the kernel log and "mount(2)
    system call failed: Too many levels of symbolic links" from mount(8)."""
    if not os.path.isdir(mountpoint):
        raise OptionError(f"mount point {mountpoint}: no such directory")
    mp = os.path.realpath(mountpoint)
    above_mp = _ancestry(mp)
    dirs = [(b.option, b.path) for b in o.branches]
    if o.workdir is not None and not o.workdir_in_upper:
        dirs.append(("workdir", o.workdir))
    for option, path in dirs:
        above_dir = _ancestry(path)
        if above_dir[0] in above_mp or above_mp[0] in above_dir:
            raise OptionError(f"mount point {mp} and {option} {path} overlap")


def validate(o: UnionOptions, mountpoint: str | None = None) -> UnionOptions:
    """Resolve and check the branches (and the mount point: :func:`check_mountpoint`); raise
    :class:`OptionError` naming the option of the first problem."""
    if len(o.branches) > MAX_BRANCHES:
        raise OptionError(f"too many branches ({len(o.branches)}, at most {MAX_BRANCHES})")
    for i, b in enumerate(o.branches):
        if b.writable and i != 0:
            raise OptionError(f"{b.option}: {b.path}: only the leftmost (top) branch can be rw")
        if not os.path.exists(b.path):
            raise OptionError(f"{b.option}: {b.path}: no such directory")
        if not os.path.isdir(b.path):
            raise OptionError(f"{b.option}: {b.path}: not a directory")
        b.path = os.path.realpath(b.path)
    for i, a in enumerate(o.branches):
        for b in o.branches[i + 1 :]:
            if _inside(a.path, b.path) or _inside(b.path, a.path):
                raise OptionError(f"{a.option}: branches {a.path} and {b.path} overlap")
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
                raise OptionError(f"workdir: {o.workdir}: no such directory")
            o.workdir = os.path.realpath(o.workdir)
            if os.stat(o.workdir).st_dev != os.stat(up.path).st_dev:
                raise OptionError(
                    f"workdir {o.workdir} is on a different filesystem than upperdir {up.path}"
                )
            for b in o.branches:
                if _inside(o.workdir, b.path) or _inside(b.path, o.workdir):
                    raise OptionError(f"workdir {o.workdir} and {b.option} {b.path} overlap")
        if not os.access(up.path, os.W_OK):
            raise OptionError(f"{up.option}: {up.path} is not writable")
    if mountpoint is not None:
        check_mountpoint(o, mountpoint)
    return o
