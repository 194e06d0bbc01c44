"""POSIX conformance of the union against a plain directory, side by side (issue 9).

A seeded generator builds a tree in the union's branches (``upper``, ``lower``: lower branches
only, ``mixed``: every branch, with names in several layers, lower hard links, whiteouts in aufs
and overlayfs form and a file hiding a lower directory) and the same merged tree in a plain
directory; then it runs a sequence of generated operations (link, unlink, rename, mkdir, rmdir,
symlink, chmod, chown, truncate, open with assorted flags, write, read, xattrs, a write after
unlink) on both and compares every result: the errno,
and the type, mode, nlink, uid, gid, size and content of every name an operation touched. Every
``check_every`` operations and at the end the whole trees are compared, including which names
are hard links of one another (the partition by st_ino).

Every ``meta_every`` operations one more operation comes from a second seeded stream (so the
main sequence stays what the seed always gave): one aimed at the union's own metadata
(docs/security.md). ``user.overlay.*`` xattrs, with values that are redirects out of the tree
(``/../../..``), into it (``/d0``) and opaque markers, are a user's own data without
``userxattr``: run on both sides and compared like any xattr (a union that followed them would
show another listing). The union's metadata names (``trusted.overlay.*``, ``user.overlay.*``
under ``userxattr``), a ``.wh.*`` name and a 0/0 character device (a whiteout) are not run on
the plain directory (root could make them there); the union must answer what the plain
directory's path gives (ENOENT, ENOTDIR, EEXIST), else EPERM, and show nothing of them.

Differences that are the union's documented behaviour are not compared: directory st_nlink and
st_size (a merged directory reports 1 and its upper's size, as aufs does), times. Names are
drawn from a small vocabulary over a few directories, so most operations meet existing names
(EEXIST, ENOTEMPTY, EISDIR, ENOTDIR, renames over files and directories, links of links).

:func:`run` is what ``tests/union/test_union_conformance.py`` (fixed seed) and
``bench/conformance_bench.py`` (long runs) call; a :class:`Difference` names the seed, the step
and the operations that led to it.
"""

from __future__ import annotations

import errno
import os
import random
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackfs.union import whiteout

TREES = ("upper", "lower", "mixed")
#: directories operations are aimed at (some exist in the tree, some are made by mkdir)
DIRS = ("", "d0", "d1", "d1/e", "dA", "d0/dA", "dA/dB", "x1", "x2", "c0")
#: names operations are aimed at
NAMES = ("f0", "f1", "f2", "f3", "f4", "f5", "h0", "h1", "n0", "n1", "dA", "dB", "s0", "c0")
#: names the tree is built of (the rest of NAMES is made by the operations)
FILE_NAMES = ("f0", "f1", "f2", "f3", "f4", "f5", "n0", "n1", "s0")
XATTR_NAMES = ("user.a", "user.b")
#: what is compared of one name (:func:`describe`)
Described = tuple[Any, ...]
#: xattr names of the union's metadata in one mode or the other, and values that would mean
#: something to it (docs/security.md)
META_XATTR_NAMES = (
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
    "user.overlay.opaque",
    "user.overlay.redirect",
    "user.overlay.origin",
)
META_VALUES = (b"y", b"/d0", b"d1", b"/../../../..", b"/x1/../../..")
MODES = (0o644, 0o600, 0o755, 0o201, 0o4755, 0o1777, 0o000, 0o640)
IDS = (0, 65534, 1000, 65533)
#: relative, and never out of the tree (chmod and truncate follow symlinks)
SYMLINK_TARGETS = (b"f0", b"nowhere", b"d1", b"e/f1", b"s0", b"h0")
OPEN_FLAGS = (
    ("O_RDONLY", os.O_RDONLY),
    ("O_WRONLY|O_TRUNC", os.O_WRONLY | os.O_TRUNC),
    ("O_RDWR|O_CREAT", os.O_RDWR | os.O_CREAT),
    ("O_WRONLY|O_CREAT|O_EXCL", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
    ("O_WRONLY|O_APPEND", os.O_WRONLY | os.O_APPEND),
    ("O_RDONLY|O_DIRECTORY", os.O_RDONLY | os.O_DIRECTORY),
    ("O_RDWR|O_NOFOLLOW", os.O_RDWR | os.O_NOFOLLOW),
    ("O_RDWR|O_CREAT|O_TRUNC", os.O_RDWR | os.O_CREAT | os.O_TRUNC),
)


class Difference(AssertionError):
    """The union and the plain directory disagreed."""


@dataclass
class Layers:
    """Where the tree goes: the union's branch directories (top first) and the plain copy."""

    branches: list[str]
    plain: str


@dataclass
class Op:
    name: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.name}{self.args!r}"


@dataclass
class Result:
    errno: int = 0
    data: bytes | None = None


@dataclass
class Report:
    seed: int
    tree: str
    ops: int = 0
    compared: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: operations aimed at the union's metadata (besides ``ops``)
    meta: int = 0


# -- the tree ----------------------------------------------------------------------------------


def _content(layer: int, path: str, rnd: random.Random) -> bytes:
    return f"L{layer}:{path}:".encode() * rnd.randint(0, 40)


def build_tree(tree: str, layers: Layers, seed: int) -> None:
    """Fill the branches for ``tree`` and the plain directory with the union's merged view."""
    rnd = random.Random(seed * 7919 + TREES.index(tree))
    nbr = len(layers.branches)
    used = {"upper": [0], "lower": list(range(1, nbr)), "mixed": list(range(nbr))}[tree]
    common = ["", "d0", "d1", "d1/e"]
    plain = layers.plain
    owner: dict[str, int] = {}  # path -> layer that shows it
    # top-down: the first layer to have a path shows it
    for li in used:
        root = layers.branches[li]
        for d in common:
            os.makedirs(os.path.join(root, d), exist_ok=True)
            os.makedirs(os.path.join(plain, d), exist_ok=True)
        own_dir = f"x{li}"
        os.makedirs(os.path.join(root, own_dir), exist_ok=True)
        if own_dir not in owner:
            owner[own_dir] = li
            os.makedirs(os.path.join(plain, own_dir), exist_ok=True)
        for _i in range(24):
            d = rnd.choice(common + [own_dir])
            name = rnd.choice(FILE_NAMES)
            path = os.path.join(d, name)
            if os.path.lexists(os.path.join(root, path)):
                continue
            kind = rnd.choices(["reg", "lnk", "fifo"], [8, 2, 1])[0]
            data = _content(li, path, rnd)
            mode = rnd.choice((0o644, 0o600, 0o755, 0o640))
            uid, gid = rnd.choice(IDS), rnd.choice(IDS)
            target = rnd.choice(SYMLINK_TARGETS)
            for base, show in ((root, True), (plain, path not in owner)):
                if not show:
                    continue
                p = os.path.join(base, path)
                if kind == "reg":
                    with open(p, "wb") as f:
                        f.write(data)
                    os.chmod(p, mode)
                elif kind == "lnk":
                    os.symlink(target, p)
                else:
                    os.mkfifo(p, mode)
                os.lchown(p, uid, gid)
            owner.setdefault(path, li)
        # hard links within the layer, between names it shows
        regs = [
            p
            for p, o in owner.items()
            if o == li
            and os.path.isfile(os.path.join(root, p))
            and not os.path.islink(os.path.join(root, p))
        ]
        for j in range(min(3, len(regs))):
            src = rnd.choice(regs)
            dst = os.path.join(rnd.choice(common), f"h{j}")
            if dst in owner or os.path.lexists(os.path.join(root, dst)):
                continue
            os.link(os.path.join(root, src), os.path.join(root, dst))
            os.link(os.path.join(plain, src), os.path.join(plain, dst))
            owner[dst] = li
    if tree != "mixed":
        return
    # a lower directory hidden by a file of the layer above
    l1, l2 = layers.branches[1], layers.branches[2]
    os.makedirs(os.path.join(l2, "c0"), exist_ok=True)
    with open(os.path.join(l2, "c0", "under"), "wb") as f:
        f.write(b"hidden")
    if "c0" not in owner:
        with open(os.path.join(l1, "c0"), "wb") as f:
            f.write(b"file over dir")
        with open(os.path.join(plain, "c0"), "wb") as f:
            f.write(b"file over dir")
        owner["c0"] = 1
    # whiteouts of names of l2 in l1 and of l1 in the upper, in aufs or in overlayfs form
    for p, o in list(owner.items()):
        if o == 0 or rnd.random() < 0.5 or os.path.dirname(p) not in common:
            continue
        above, below = layers.branches[o - 1], layers.branches[o]
        q = os.path.join(plain, p)
        if os.path.lexists(os.path.join(above, p)) or os.path.isdir(q) and not os.path.islink(q):
            continue  # (directories of a layer are the common ones or its own x*)
        if os.lstat(os.path.join(below, p)).st_nlink > 1:
            continue  # (a whited-out hard link would leave its other names' nlink too high)
        d, n = os.path.split(p)
        if rnd.random() < 0.5:
            open(os.path.join(above, d, ".wh." + n), "wb").close()  # aufs form
        else:  # overlayfs form: a 0/0 character device
            os.mknod(os.path.join(above, p), stat_mod.S_IFCHR, os.makedev(0, 0))
        os.unlink(q)
        del owner[p]


# -- operations --------------------------------------------------------------------------------


#: how often each of DIRS is picked (the tree's own directories more often)
DIR_WEIGHTS = (8, 6, 6, 4, 2, 1, 1, 3, 3, 1)


def _path(rnd: random.Random) -> str:
    return os.path.join(rnd.choices(DIRS, DIR_WEIGHTS)[0], rnd.choice(NAMES))


def generate(rnd: random.Random) -> Op:
    """One random operation."""
    k = rnd.choices(
        [
            "link",
            "unlink",
            "rename",
            "mkdir",
            "rmdir",
            "symlink",
            "chmod",
            "chown",
            "truncate",
            "open",
            "read",
            "open_unlink",
            "setxattr",
            "getxattr",
        ],
        [10, 8, 12, 6, 5, 4, 6, 5, 5, 12, 6, 2, 3, 2],
    )[0]
    if k in ("link", "rename"):
        return Op(k, (_path(rnd), _path(rnd)))
    if k == "mkdir":
        return Op(k, (_path(rnd), rnd.choice((0o755, 0o700, 0o2775))))
    if k == "symlink":
        return Op(k, (rnd.choice(SYMLINK_TARGETS), _path(rnd)))
    if k == "chmod":
        return Op(k, (_path(rnd), rnd.choice(MODES)))
    if k == "chown":
        return Op(k, (_path(rnd), rnd.choice(IDS), rnd.choice(IDS)))
    if k == "truncate":
        return Op(k, (_path(rnd), rnd.choice((0, 3, 100, 5000))))
    if k == "setxattr":
        return Op(k, (_path(rnd), rnd.choice(XATTR_NAMES), rnd.choice((b"", b"v", b"value" * 9))))
    if k == "getxattr":
        return Op(k, (_path(rnd), rnd.choice(XATTR_NAMES)))
    if k == "open":
        label, _fl = rnd.choice(OPEN_FLAGS)
        data = rnd.choice((b"", b"w", b"written " * rnd.randint(1, 30)))
        return Op(k, (_path(rnd), label, data, rnd.randint(0, 50)))
    return Op(k, (_path(rnd),))


def generate_meta(rnd: random.Random) -> Op:
    """One operation aimed at the union's metadata (see the module docstring)."""
    path = _path(rnd)
    k = rnd.choice(("setxattr", "setxattr", "removexattr", "mknod", "create", "mkdir"))
    if k == "setxattr":
        # half of them on a directory of the tree (a redirect or opaque marker would bite)
        if rnd.random() < 0.5:
            path = rnd.choices(DIRS, DIR_WEIGHTS)[0] or "."
        return Op(k, (path, rnd.choice(META_XATTR_NAMES), rnd.choice(META_VALUES)))
    if k == "removexattr":
        return Op(k, (path, rnd.choice(META_XATTR_NAMES)))
    if k == "mknod":
        return Op(k, (path, stat_mod.S_IFCHR | 0o644, 0))
    d, n = os.path.split(path)
    wh = os.path.join(d, ".wh." + n)
    if k == "mkdir":
        return Op(k, (wh, 0o755))
    return Op("open", (wh, "O_WRONLY|O_CREAT|O_EXCL", b"wh", 0))


def is_meta(op: Op, userxattr: bool) -> bool:
    """Is ``op`` aimed at the union's own metadata (refused by the union, not run on the plain
    directory)?"""
    if op.name in ("setxattr", "removexattr"):
        return bool(op.args[1].startswith(whiteout.meta_xattrs(userxattr)))
    if op.name == "mknod":
        return stat_mod.S_ISCHR(op.args[1]) and op.args[2] == 0
    return op.name in ("open", "mkdir") and os.path.basename(op.args[0]).startswith(".wh.")


def expected_meta(plain: str, op: Op) -> Result:
    """What the union must answer to a metadata operation: the errno the plain directory's path
    gives (the kernel's lookup comes first; xattr calls follow symlinks, the others work on the
    parent), EEXIST for a device made over a name, else EPERM."""
    path = os.path.join(plain, op.args[0])
    probe = path if op.name in ("setxattr", "removexattr") else os.path.dirname(path) + "/"
    try:
        os.stat(probe)
    except OSError as e:
        return Result(e.errno or errno.EIO)
    if op.name == "mknod" and os.path.lexists(path):
        return Result(errno.EEXIST)
    return Result(errno.EPERM)


def _flags(label: str) -> int:
    return dict(OPEN_FLAGS)[label]


def apply(root: str, op: Op) -> Result:
    """Run ``op`` under ``root``; the errno and what it returned."""

    def p(rel: str | bytes) -> str:
        return os.path.join(root, rel) if isinstance(rel, str) else rel.decode()

    a = op.args
    try:
        if op.name == "link":
            os.link(p(a[0]), p(a[1]), follow_symlinks=False)
        elif op.name == "unlink":
            os.unlink(p(a[0]))
        elif op.name == "rename":
            os.rename(p(a[0]), p(a[1]))
        elif op.name == "mkdir":
            os.mkdir(p(a[0]), a[1])
        elif op.name == "rmdir":
            os.rmdir(p(a[0]))
        elif op.name == "symlink":
            os.symlink(a[0], p(a[1]))
        elif op.name == "chmod":
            os.chmod(p(a[0]), a[1])
        elif op.name == "chown":
            os.lchown(p(a[0]), a[1], a[2])
        elif op.name == "truncate":
            os.truncate(p(a[0]), a[1])
        elif op.name == "open":
            # O_NONBLOCK: a FIFO must not wait for a writer (nor a reader)
            fd = os.open(p(a[0]), _flags(a[1]) | os.O_NONBLOCK, 0o640)
            try:
                out = b""
                if _flags(a[1]) & os.O_ACCMODE != os.O_RDONLY:
                    os.write(fd, a[2])
                if not _flags(a[1]) & os.O_DIRECTORY and _flags(a[1]) & os.O_ACCMODE != os.O_WRONLY:
                    out = os.pread(fd, 1 << 16, a[3])
                st = os.fstat(fd)
                nlink = "dir" if stat_mod.S_ISDIR(st.st_mode) else st.st_nlink
                return Result(0, out + f"|{st.st_size}|{nlink}".encode())
            finally:
                os.close(fd)
        elif op.name == "read":
            fd = os.open(p(a[0]), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                return Result(0, os.read(fd, 1 << 20))
            finally:
                os.close(fd)
        elif op.name == "setxattr":
            os.setxattr(p(a[0]), a[1], a[2])
        elif op.name == "removexattr":
            os.removexattr(p(a[0]), a[1])
        elif op.name == "mknod":
            os.mknod(p(a[0]), a[1], a[2])
        elif op.name == "getxattr":
            return Result(0, os.getxattr(p(a[0]), a[1]))
        elif op.name == "open_unlink":
            # an open file outlives its name: write after unlink, fstat sees nlink less one
            fd = os.open(p(a[0]), os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                before = os.fstat(fd).st_nlink
                os.unlink(p(a[0]))
                os.pwrite(fd, b"after-unlink", 0)
                st = os.fstat(fd)
                data = os.pread(fd, 1 << 16, 0)
                try:  # xattrs of a file with no name left go through its fd
                    os.setxattr(fd, "user.u", b"orphan")
                    x = (
                        os.getxattr(fd, "user.u")
                        + b"|"
                        + ",".join(sorted(os.listxattr(fd))).encode()
                    )
                    os.removexattr(fd, "user.u")
                except OSError as e:
                    x = str(e.errno).encode()
                return Result(0, f"{before}|{st.st_nlink}|{st.st_size}|".encode() + data + x)
            finally:
                os.close(fd)
        else:
            raise ValueError(op.name)
    except OSError as e:
        return Result(e.errno or errno.EIO)
    return Result(0)


def describe(root: str, rel: str) -> Described:
    """What is compared of one name: errno or (type, mode, nlink, uid, gid, size, content,
    xattrs)."""
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno or 0, e.errno))
    fmt = stat_mod.S_IFMT(st.st_mode)
    content: bytes | None = None
    size: int | None = st.st_size
    nlink: int | None = st.st_nlink
    if stat_mod.S_ISREG(fmt):
        with open(path, "rb") as f:
            content = f.read()
    elif stat_mod.S_ISLNK(fmt):
        content = os.readlink(path).encode()
    elif stat_mod.S_ISDIR(fmt):
        size = nlink = None
        content = "\0".join(sorted(os.listdir(path))).encode()
    xattrs: tuple[tuple[str, bytes], ...] = ()
    if stat_mod.S_ISREG(fmt) or stat_mod.S_ISDIR(fmt):
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
    mode = oct(stat_mod.S_IMODE(st.st_mode))
    return (fmt, mode, nlink, st.st_uid, st.st_gid, size, content, xattrs)


def snapshot(root: str) -> tuple[dict[str, Described], list[list[str]]]:
    """Every name under ``root`` described, and the hard-link classes (names sharing st_ino)."""
    out: dict[str, Described] = {}
    by_ino: dict[int, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root)
            out[rel] = describe(root, rel)
            st = os.lstat(full)
            if not stat_mod.S_ISDIR(st.st_mode):
                by_ino.setdefault(st.st_ino, []).append(rel)
    classes = sorted(sorted(v) for v in by_ino.values() if len(v) > 1)
    return out, classes


def compare_trees(union: str, plain: str) -> list[str]:
    u, uc = snapshot(union)
    p, pc = snapshot(plain)
    diffs = []
    for rel in sorted(set(u) | set(p)):
        a, b = u.get(rel, ("missing",)), p.get(rel, ("missing",))
        if a != b:
            diffs.append(f"{rel}: union {a!r} plain {b!r}")
    if uc != pc:
        diffs.append(f"hard-link classes: union {uc} plain {pc}")
    return diffs


def _touched(op: Op) -> list[str]:
    out = []
    for a in op.args:
        if isinstance(a, str) and ("/" in a or a in NAMES or a.startswith(".wh.")):
            if not os.path.basename(a).startswith(".wh."):  # (the union refuses to look it up)
                out.append(a)
            d = os.path.dirname(a)
            out.append(d or ".")
    return out


def run(
    layers: Layers,
    union_root: str,
    *,
    seed: int,
    ops: int,
    tree: str = "mixed",
    check_every: int = 50,
    built: bool = False,
    on_step: Callable[[int, Op], None] | None = None,
    history: int = 30,
    meta_every: int = 5,
    userxattr: bool = False,
) -> Report:
    """Run ``ops`` generated operations on the union (mounted at ``union_root`` over
    ``layers.branches``) and on ``layers.plain``; raise :class:`Difference` at the first
    disagreement. ``built``: the tree is there already (else :func:`build_tree` is NOT called:
    the branches must be filled before the union is mounted, so callers build first).
    ``meta_every``: one metadata operation after every that many (0: none); ``userxattr``:
    the union is mounted so (which names are its metadata)."""
    rnd = random.Random(seed)
    mrnd = random.Random(seed * 104729 + 1)
    rep = Report(seed, tree)
    done: list[str] = []
    for step in range(ops):
        _step(union_root, layers.plain, generate(rnd), step, rep, done, on_step, history, None)
        if meta_every and (step + 1) % meta_every == 0:
            meta = generate_meta(mrnd)
            _step(union_root, layers.plain, meta, step, rep, done, on_step, history, userxattr)
        if check_every and (step + 1) % check_every == 0 or step == ops - 1:
            diffs = compare_trees(union_root, layers.plain)
            rep.compared += 1
            if diffs:
                _fail(rep, step, done, "trees differ:\n  " + "\n  ".join(diffs[:20]))
    return rep


def _fail(rep: Report, step: int, done: list[str], what: str) -> None:
    raise Difference(
        f"seed {rep.seed} tree {rep.tree} step {step}: {what}\nlast operations:\n  "
        + "\n  ".join(done)
    )


def _step(
    union_root: str,
    plain: str,
    op: Op,
    step: int,
    rep: Report,
    done: list[str],
    on_step: Callable[[int, Op], None] | None,
    history: int,
    userxattr: bool | None,
) -> None:
    """Run one operation on both sides (one on the union's metadata on the union only, against
    :func:`expected_meta`) and compare the results and every name it touched. ``userxattr``:
    the union's mode, for an operation of the metadata stream; None for the main one."""
    if on_step is not None:
        on_step(step, op)
    meta = userxattr is not None and is_meta(op, userxattr)
    ru = apply(union_root, op)
    rp = expected_meta(plain, op) if meta else apply(plain, op)
    tag = "meta " if meta else ""
    done.append(f"{step}: {tag}{op} -> {errno.errorcode.get(rp.errno, 0) if rp.errno else 0}")
    del done[:-history]
    if userxattr is not None:
        rep.meta += 1
    else:
        rep.ops += 1
        if rp.errno:
            name = errno.errorcode.get(rp.errno, str(rp.errno))
            rep.errors[name] = rep.errors.get(name, 0) + 1
    if (ru.errno, ru.data) != (rp.errno, rp.data):
        _fail(
            rep,
            step,
            done,
            f"{tag}{op}: union {errno.errorcode.get(ru.errno, 0)} {ru.data!r} "
            f"{'expected' if meta else 'plain'} {errno.errorcode.get(rp.errno, 0)} {rp.data!r}",
        )
    for rel in _touched(op):
        a, b = describe(union_root, rel), describe(plain, rel)
        rep.compared += 1
        if a != b:
            _fail(rep, step, done, f"after {tag}{op}: {rel}: union {a!r} plain {b!r}")
