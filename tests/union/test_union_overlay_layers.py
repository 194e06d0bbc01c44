"""overlayfs-format layers (issue 9): lower branches written by overlayfs or by container tools
(whiteouts as 0/0 character devices, ``trusted.overlay.opaque`` = ``y``, the ``user.overlay.*``
forms under ``userxattr``) stack as the aufs equivalents, the way an OCI image's unpacked layers
are laid out; the union writes aufs forms unless mounted with ``whiteout=overlay``. The views
are checked against the kernel's own overlayfs mounted over the same directories."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def ovl_whiteout(path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def view(root) -> dict[str, str]:
    """Every name under ``root``: file contents, ``<dir>`` or ``-> target``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "<dir>"
        for n in files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            out[rel] = "-> " + os.readlink(p) if os.path.islink(p) else open(p).read()
    return out


def oci_layers(base):
    """Three layers as an OCI image unpacked for overlayfs would give them (bottom first)."""
    l3, l2, l1 = base / "layer0", base / "layer1", base / "layer2"
    write(l3 / "etc" / "passwd", "root:x:0:0")
    write(l3 / "etc" / "group", "root:x:0:")
    write(l3 / "usr" / "bin" / "tool", "v1")
    write(l3 / "var" / "cache" / "a", "a")
    write(l3 / "var" / "cache" / "b", "b")
    write(l3 / "opt" / "app" / "x", "x")
    # layer1: deletes etc/group, replaces var/cache wholesale (opaque), adds tool2
    (l2 / "etc").mkdir(parents=True)
    ovl_whiteout(l2 / "etc" / "group")
    write(l2 / "var" / "cache" / "c", "c")
    os.setxattr(l2 / "var" / "cache", "trusted.overlay.opaque", b"y")
    write(l2 / "usr" / "bin" / "tool2", "t2")
    # layer2: deletes usr/bin/tool and var/cache/c, a new etc/passwd
    ovl_whiteout(write(l1 / "usr" / "bin" / "tool", "").parent / "tool.tmp")
    os.unlink(l1 / "usr" / "bin" / "tool")
    os.rename(l1 / "usr" / "bin" / "tool.tmp", l1 / "usr" / "bin" / "tool")
    (l1 / "var" / "cache").mkdir(parents=True)
    ovl_whiteout(l1 / "var" / "cache" / "c")
    write(l1 / "etc" / "passwd", "root:x:0:0\nuser:x:1000:1000")
    return [l1, l2, l3]


EXPECTED = {
    "etc": "<dir>",
    "etc/passwd": "root:x:0:0\nuser:x:1000:1000",
    "usr": "<dir>",
    "usr/bin": "<dir>",
    "usr/bin/tool2": "t2",
    "var": "<dir>",
    "var/cache": "<dir>",
    "opt": "<dir>",
    "opt/app": "<dir>",
    "opt/app/x": "x",
}


def kernel_overlay_view(tmp_path, lowers, extra: str = "") -> dict[str, str]:
    """What the kernel's overlayfs shows over ``lowers`` (top first), mounted read-only."""
    mp = tmp_path / "kernel-ovl"
    mp.mkdir(exist_ok=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers) + (f",{extra}" if extra else "")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mp)], check=True)
    try:
        return view(mp)
    finally:
        subprocess.run(["umount", str(mp)], check=True)


def test_oci_layers_stack_as_overlayfs_shows_them(union, tmp_path):
    u = union
    lowers = oci_layers(tmp_path)
    assert kernel_overlay_view(tmp_path, lowers) == EXPECTED  # the real kernel's reading
    u.mount(lowers=lowers)
    assert view(u.mp) == EXPECTED
    assert sorted(os.listdir(u.m("var", "cache"))) == []  # opaque, then c whited out
    assert not u.m("etc", "group").exists()
    # writing stays aufs-style by default
    os.unlink(u.m("etc", "passwd"))
    u.m("etc", "group").write_text("new group")
    assert (u.upper / "etc" / ".wh.passwd").exists()
    assert (u.upper / "etc" / "group").read_text() == "new group"
    u.remount()
    assert not u.m("etc", "passwd").exists()
    assert u.m("etc", "group").read_text() == "new group"


def test_user_overlay_xattrs_are_read_with_userxattr(union, tmp_path):
    """``user.overlay.*`` is overlayfs metadata only under ``userxattr`` (overlayfs' option);
    otherwise it is a user's own xattr (docs/security.md)."""
    u = union
    write(u.l2 / "d" / "old", "old")
    write(u.l1 / "d" / "new", "new")
    os.setxattr(u.l1 / "d", "user.overlay.opaque", b"y")
    write(u.l2 / "e" / "gone", "gone")
    (u.l1 / "e").mkdir()
    ovl_whiteout(u.l1 / "e" / "gone")
    u.mount("userxattr")
    assert os.listdir(u.m("d")) == ["new"]
    assert os.listdir(u.m("e")) == []
    assert not u.m("e", "gone").exists()
    # the layers' own xattrs are not listed through the union
    assert "user.overlay.opaque" not in os.listxattr(u.m("d"))
    u.umount()
    u.mount()
    assert sorted(os.listdir(u.m("d"))) == ["new", "old"]
    assert "user.overlay.opaque" in os.listxattr(u.m("d"))


@pytest.mark.parametrize("userxattr", [False, True])
def test_whiteout_overlay_writes_overlayfs_forms(union, tmp_path, userxattr):
    """``whiteout=overlay``: 0/0 character devices and trusted.overlay.opaque (user.overlay.opaque
    under ``userxattr``) in the upper; the kernel's overlayfs (with the same ``userxattr``) reads
    the result (the upper as its top lower layer) as the union shows it."""
    u = union
    write(u.l2 / "f", "f")
    write(u.l2 / "d" / "x", "x")
    write(u.l2 / "keep", "k")
    extra = "userxattr" if userxattr else ""
    u.mount("whiteout=overlay", *([extra] if extra else []))
    os.unlink(u.m("f"))
    st = os.lstat(u.upper / "f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    os.unlink(u.m("d", "x"))
    os.rmdir(u.m("d"))
    os.mkdir(u.m("d"))  # over the whiteout: an opaque directory
    ns = "user" if userxattr else "trusted"
    assert os.getxattr(u.upper / "d", f"{ns}.overlay.opaque") == b"y"
    write(u.m("d", "y"), "y")
    u.m("f").write_text("again")  # a name made again over its whiteout
    assert (u.upper / "f").read_text() == "again"
    os.unlink(u.m("f"))
    assert not any(n.startswith(".wh.") for n in os.listdir(u.upper))
    mine = view(u.mp)
    assert mine == {"keep": "k", "d": "<dir>", "d/y": "y"}
    u.umount()
    assert kernel_overlay_view(tmp_path, [u.upper, u.l1, u.l2], extra) == mine


def test_an_overlayfs_upper_is_used_as_it_is(union):
    """An upper directory written by overlayfs (0/0 devices, opaque xattr) under the default
    aufs writing: its whiteouts hide, a name is made again over one, a directory holding only
    whiteouts is removed."""
    u = union
    write(u.l1 / "f", "lower f")
    write(u.l1 / "d" / "x", "lower x")
    (u.upper / "d").mkdir()
    ovl_whiteout(u.upper / "f")
    ovl_whiteout(u.upper / "d" / "x")
    u.mount()
    assert sorted(os.listdir(u.mp)) == ["d"]
    assert os.listdir(u.m("d")) == []
    u.m("f").write_text("new f")  # over the 0/0 device
    assert (u.upper / "f").read_text() == "new f"
    os.rmdir(u.m("d"))  # the upper d held only a whiteout
    assert not u.m("d").exists()
    assert (u.upper / ".wh.d").exists()
    os.mkdir(u.m("d"))
    assert os.listdir(u.m("d")) == []  # opaque: lower x stays hidden
