"""The union trusts no metadata a user can write, and no path from metadata leaves its branch
(issue 21, item 1; docs/security.md).

The union runs as root and is mounted ``allow_other,default_permissions``; the attacker is
``nobody`` (``setpriv --reuid=65534 --regid=65534 --clear-groups``, as in the issue), working in
a world-writable lower directory ``pub`` next to a root-only ``priv`` (mode 0700). Answers are
compared with what the kernel's overlayfs gives on this machine where it has the same case.
"""

from __future__ import annotations

import ast
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90)]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
#: run one Python expression; print its value or the errno name it raised
_PROBE = """
import errno, os, sys
try:
    r = eval(sys.argv[1])
except OSError as e:
    r = errno.errorcode[e.errno]
print(repr(r))
"""
ESCAPE = b"/../../../../../../../../root"


def nobody(cwd: Path, expr: str) -> Any:
    """``expr`` evaluated by a process of ``nobody`` in ``cwd`` (relative paths: the test's
    tmp directory is not searchable for nobody): its value, or the errno name it raised."""
    res = subprocess.run(
        [*NOBODY, sys.executable, "-c", _PROBE, expr],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return ast.literal_eval(res.stdout.strip())


def root(fn: Callable[[], Any]) -> Any:
    """``fn()`` as root (this process): its value, or the errno name it raised."""
    try:
        return fn()
    except OSError as e:
        return errno.errorcode[e.errno or 0]


@pytest.fixture
def branches(union):
    """A root-only directory next to a world-writable one in the lower branch, and a symlink
    out of the branch (``abs`` -> ``/``)."""
    write(union.l1 / "priv" / "secret", "secret")
    os.chmod(union.l1 / "priv", 0o700)
    (union.l1 / "pub").mkdir()
    os.chmod(union.l1 / "pub", 0o777)
    write(union.l1 / "pub" / "data", "data", 0o666)
    os.symlink("/", union.l1 / "abs")
    return union


def test_user_overlay_redirect_is_user_data_without_userxattr(branches):
    """The issue's escape: by default ``user.overlay.*`` is a user's own data, set, read and
    listed like any user xattr and never followed (overlayfs ignores it the same way)."""
    u = branches
    u.mount("timeout=0")
    mp = u.mp
    assert nobody(mp, "os.mkdir('pub/e6')") is None
    assert nobody(mp, f"os.setxattr('pub/e6', 'user.overlay.redirect', {ESCAPE!r})") is None
    assert nobody(mp, "os.getxattr('pub/e6', 'user.overlay.redirect')") == ESCAPE
    assert nobody(mp, "os.listxattr('pub/e6')") == ["user.overlay.redirect"]
    assert nobody(mp, "sorted(os.listdir('pub/e6'))") == []
    assert nobody(mp, "os.mkdir('pub/e7')") is None
    assert nobody(mp, "os.setxattr('pub/e7', 'user.overlay.redirect', b'/priv')") is None
    assert nobody(mp, "os.setxattr('pub/e7', 'user.overlay.opaque', b'y')") is None
    assert nobody(mp, "open('pub/e7/secret').read()") == "ENOENT"
    # stored as it was given, in the upper; a fresh lookup after a remount does not follow it
    assert os.getxattr(u.upper / "pub" / "e6", "user.overlay.redirect") == ESCAPE
    u.remount()
    assert nobody(mp, "sorted(os.listdir('pub/e6'))") == []
    assert nobody(mp, "os.path.exists('pub/e7/secret')") is False
    # a lower file's user.overlay.* is copied up with it like any user xattr
    os.setxattr(u.l1 / "pub" / "data", "user.overlay.origin", b"x")
    assert "user.overlay.origin" in os.listxattr(u.m("pub", "data"))
    os.chmod(u.m("pub", "data"), 0o644)
    assert os.getxattr(u.upper / "pub" / "data", "user.overlay.origin") == b"x"


#: what listing each redirected directory gives, per form: ``up`` climbs out with ``..``,
#: ``bad`` is not a path the union can take, ``sym`` goes through a symlink out of the branch,
#: ``ok`` names a directory inside it
REDIRECTED = {
    "aufs": {"up": "EACCES", "bad": "EINVAL", "sym": [], "ok": ["secret"]},
    "trusted": {"up": "EACCES", "bad": "EINVAL", "sym": [], "ok": ["secret"]},
    # overlayfs' userxattr implies redirect_dir=nofollow: a valid redirect is refused (EPERM)
    "userxattr": {"up": "EPERM", "bad": "EINVAL", "sym": "EPERM", "ok": "EPERM"},
}


@pytest.mark.parametrize("form", list(REDIRECTED))
def test_redirects_stay_in_their_branch(branches, form):
    """Metadata the union trusts, written straight into the upper (by root, or under
    ``userxattr`` by whoever owns the upper): a redirect climbing out with ``..`` fails the
    directory's lookup with EACCES and one that is not a path the union can take with EINVAL,
    one through a symlink is not followed (the directory shows its upper entries only), one
    to a directory inside the branch works; under ``userxattr`` no xattr redirect is followed
    (EPERM). The xattr forms give what the kernel's overlayfs gives over the same layers."""
    u = branches
    up = u.upper / "pub"
    for d in ("up", "bad", "sym", "ok"):
        (up / d).mkdir(parents=True)

    def redirect(d: str, value: bytes) -> None:
        if form == "aufs":
            (up / d / ".wh..wh..redir").write_bytes(value + b"\n")
        else:
            ns = "user" if form == "userxattr" else "trusted"
            os.setxattr(up / d, f"{ns}.overlay.redirect", value)

    redirect("up", ESCAPE)
    redirect("bad", b"//root" if form == "aufs" else b"a/../../root")
    redirect("sym", b"/abs/root")
    redirect("ok", b"/priv")
    u.mount("timeout=0", *(["userxattr"] if form == "userxattr" else []))
    want = REDIRECTED[form]
    got = {d: root(lambda d=d: sorted(os.listdir(u.m("pub", d)))) for d in want}
    assert got == want
    assert nobody(u.mp, "os.listdir('pub/up')") == want["up"]
    if form != "aufs":
        ovl = kernel_overlay(u, form == "userxattr")
        try:
            kernel = {d: root(lambda d=d: sorted(os.listdir(ovl / "pub" / d))) for d in want}
        finally:
            subprocess.run(["umount", str(ovl)], check=True)
        assert kernel == want


def kernel_overlay(u, userxattr: bool) -> Path:
    """The kernel's overlayfs over the union's branches (the upper as its top lower layer),
    read-only; the union is unmounted first."""
    u.umount()
    mp = u.root / "kernel-ovl"
    mp.mkdir(exist_ok=True)
    opts = f"lowerdir={u.upper}:{u.l1}:{u.l2}"
    opts += ",userxattr" if userxattr else ",redirect_dir=follow"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mp)], check=True)
    return mp


@pytest.mark.parametrize("userxattr", [False, True])
def test_union_metadata_xattrs_are_eperm_and_hidden(branches, userxattr):
    """The union's own names (``trusted.overlay.*``, and ``user.overlay.*`` under
    ``userxattr``) cannot be set or removed through the union, by root either (EPERM), nor
    read or listed; nobody cannot touch any ``trusted.*`` (the kernel's own answer)."""
    u = branches
    (u.upper / "pub" / "d").mkdir(parents=True)
    os.chmod(u.upper / "pub" / "d", 0o777)
    os.setxattr(u.upper / "pub" / "d", "trusted.overlay.origin", b"o")
    if userxattr:
        os.setxattr(u.upper / "pub" / "d", "user.overlay.origin", b"o")
    os.setxattr(u.upper / "pub" / "d", "user.plain", b"p")
    u.mount("timeout=0", *(["userxattr"] if userxattr else []))
    d = u.m("pub", "d")
    meta = ["trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.origin"]
    if userxattr:
        meta += ["user.overlay.opaque", "user.overlay.redirect", "user.overlay.origin"]
    for name in meta:
        assert root(lambda n=name: os.setxattr(d, n, b"y")) == "EPERM", name
        assert root(lambda n=name: os.removexattr(d, n)) == "EPERM", name
        assert root(lambda n=name: os.getxattr(d, n)) == "ENODATA", name
    assert sorted(os.listxattr(d)) == ["user.plain"]
    assert nobody(u.mp, "os.setxattr('pub/d', 'trusted.overlay.opaque', b'y')") == "EPERM"
    if userxattr:
        assert nobody(u.mp, "os.setxattr('pub/d', 'user.overlay.redirect', b'/priv')") == "EPERM"
        assert nobody(u.mp, "os.removexattr('pub/d', 'user.overlay.origin')") == "EPERM"
    assert nobody(u.mp, "os.setxattr('pub/d', 'user.plain', b'q')") is None
    assert os.getxattr(u.upper / "pub" / "d", "user.plain") == b"q"
    assert os.getxattr(u.upper / "pub" / "d", "trusted.overlay.origin") == b"o"


def test_trusted_xattrs_hidden_from_non_root_listings(branches):
    """FUSE passes a listing through as the daemon made it (as root): the union leaves
    ``trusted.*`` out for a caller that is not root, as ext4 and overlayfs do."""
    u = branches
    u.mount("timeout=0")
    f = u.m("pub", "f")
    f.write_text("f")
    os.chmod(f, 0o666)
    os.setxattr(f, "trusted.foo", b"1")
    os.setxattr(f, "user.bar", b"2")
    assert sorted(os.listxattr(f)) == ["trusted.foo", "user.bar"]
    assert nobody(u.mp, "os.listxattr('pub/f')") == ["user.bar"]
    assert nobody(u.mp, "os.getxattr('pub/f', 'trusted.foo')") == "ENODATA"
    assert nobody(u.mp, "os.getxattr('pub/f', 'user.bar')") == b"2"


def test_mknod_of_a_whiteout_is_eperm(branches):
    """A 0/0 character device is a whiteout in every branch: nobody (whom a plain filesystem
    lets make one since Linux 5.8) and root get EPERM, as from the kernel's overlayfs."""
    u = branches
    u.mount("timeout=0")
    assert nobody(u.mp, "os.mknod('pub/wh', 0o20644, 0)") == "EPERM"
    assert root(lambda: os.mknod(u.m("pub", "wh2"), stat.S_IFCHR | 0o644, 0)) == "EPERM"
    assert not (u.upper / "pub" / "wh").exists() and not (u.upper / "pub" / "wh2").exists()
    assert nobody(u.mp, "os.mknod('pub/fifo', 0o10644, 0)") is None
    assert nobody(u.mp, "os.mknod('pub/data', 0o20644, 0)") == "EEXIST"
    ovl = u.root / "kernel-ovl"
    ovl.mkdir()
    work = u.root / "kwork"
    work.mkdir()
    upper = u.root / "kupper"
    upper.mkdir(mode=0o777)
    os.chmod(upper, 0o777)
    opts = f"lowerdir={u.l1},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(ovl)], check=True)
    try:
        assert nobody(ovl, "os.mknod('pub/wh', 0o20644, 0)") == "EPERM"
        assert root(lambda: os.mknod(ovl / "pub" / "wh2", stat.S_IFCHR | 0o644, 0)) == "EPERM"
    finally:
        subprocess.run(["umount", str(ovl)], check=True)


def test_wh_names_cannot_be_made_through_the_union(branches):
    """``.wh.*`` names are the union's whiteouts and meta files: every way to make one through
    the union is EPERM (aufs' ``au_test_shwh``)."""
    u = branches
    u.mount("timeout=0")
    for expr in (
        "open('pub/.wh.data', 'w')",
        "os.mkdir('pub/.wh..wh..opq')",
        "os.symlink('/', 'pub/.wh..wh..redir')",
        "os.mknod('pub/.wh.fifo', 0o10644, 0)",
        "os.rename('pub/data', 'pub/.wh.data')",
        "os.link('pub/data', 'pub/.wh.x')",
        "os.stat('pub/.wh..wh..redir')",
    ):
        assert nobody(u.mp, expr) == "EPERM", expr
    made = os.listdir(u.upper / "pub") if (u.upper / "pub").exists() else []
    assert not any(n.startswith(".wh.") for n in made)
