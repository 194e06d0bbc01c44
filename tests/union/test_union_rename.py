"""rename: files anywhere, lower directories without EXDEV or data copies, flags as on ext4."""

from __future__ import annotations

import errno
import os

import pytest

from stackfs.linux import libc
from stackfs.linux.libc import RENAME_EXCHANGE, RENAME_NOREPLACE

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def renameat2(old, new, flags: int) -> None:
    libc.renameat2(libc.AT_FDCWD, os.fsencode(old), libc.AT_FDCWD, os.fsencode(new), flags)


def tree(root) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p).read()
    return out


def test_rename_files(mounted):
    u = mounted
    os.rename(u.m("b"), u.m("d", "b-moved"))  # lower file into a merged dir
    assert not u.m("b").exists()
    assert u.m("d", "b-moved").read_text() == "l2-b"
    assert (u.upper / ".wh.b").exists()
    os.rename(u.m("d", "x"), u.m("a"))  # over a name that exists in two lowers
    assert u.m("a").read_text() == "l1-d-x"
    assert not u.m("d", "x").exists()
    u.m("new").write_text("n")
    os.rename(u.m("new"), u.m("d", "sub", "z"))
    assert u.m("d", "sub", "z").read_text() == "n"


def test_rename_lower_directory_without_exdev_or_data_copy(union):
    u = union
    write(u.l1 / "top" / "f1", "one")
    write(u.l2 / "top" / "deep" / "f2", "two" * 1000)
    write(u.l2 / "top" / "deep" / "f3", "three")
    write(u.l2 / "other", "o")
    u.mount("timeout=0")
    before = tree(u.m("top"))
    inos = {p: os.stat(u.m("top", p)).st_ino for p in before}
    os.unlink(u.m("top", "deep", "f3"))
    del before["deep/f3"]
    os.rename(u.m("top"), u.m("moved"))  # no EXDEV
    assert not u.m("top").exists()
    assert tree(u.m("moved")) == before
    # no file data was copied: the upper has directories and meta files only
    for dirpath, _dirs, files in os.walk(u.upper):
        for f in files:
            assert f.startswith(".wh."), os.path.join(dirpath, f)
    os.rename(u.m("moved", "deep"), u.m("deep2"))  # a subdirectory out of the renamed one
    assert u.m("deep2", "f2").read_text() == "two" * 1000
    assert sorted(os.listdir(u.m("moved"))) == ["f1"]
    u.m("top").mkdir()  # the old name is free and empty
    assert os.listdir(u.m("top")) == []
    u.remount()
    assert tree(u.m("moved")) == {"f1": "one"}
    assert tree(u.m("deep2")) == {"f2": "two" * 1000}
    assert os.listdir(u.m("top")) == []
    assert os.stat(u.m("moved", "f1")).st_ino == inos["f1"]
    assert os.stat(u.m("deep2", "f2")).st_ino == inos["deep/f2"]
    u.m("deep2", "f2").write_text("w")  # still copy-up-able at its new place
    assert (u.upper / "deep2" / "f2").read_text() == "w"
    assert (u.l2 / "top" / "deep" / "f2").read_text() == "two" * 1000


def test_rename_directory_over_empty_merged_directory(union):
    u = union
    write(u.l2 / "src" / "s", "s")
    write(u.l2 / "dst" / "old", "old")
    u.mount("timeout=0")
    os.unlink(u.m("dst", "old"))
    os.rename(u.m("src"), u.m("dst"))
    assert tree(u.m("dst")) == {"s": "s"}
    write(u.l2 / "full" / "f", "f")
    with pytest.raises(OSError) as ei:
        os.rename(u.m("dst"), u.m("full"))
    assert ei.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    u.remount()
    assert tree(u.m("dst")) == {"s": "s"}


def test_rename_noreplace_and_exchange(union):
    u = union
    write(u.l1 / "f", "F")
    write(u.l2 / "g", "G")
    write(u.l2 / "dir" / "inside", "I")
    u.mount("timeout=0")
    with pytest.raises(OSError) as ei:
        renameat2(u.m("f"), u.m("g"), RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    renameat2(u.m("f"), u.m("h"), RENAME_NOREPLACE)
    assert u.m("h").read_text() == "F" and not u.m("f").exists()
    renameat2(u.m("h"), u.m("g"), RENAME_EXCHANGE)
    assert u.m("h").read_text() == "G" and u.m("g").read_text() == "F"
    renameat2(u.m("h"), u.m("dir"), RENAME_EXCHANGE)  # a file and a lower directory
    assert u.m("h", "inside").read_text() == "I"
    assert u.m("dir").read_text() == "G"
    with pytest.raises(OSError) as ei:
        renameat2(u.m("g"), u.m("nothing"), RENAME_EXCHANGE)
    assert ei.value.errno == errno.ENOENT
    u.remount()
    assert u.m("h", "inside").read_text() == "I"
    assert u.m("dir").read_text() == "G"
    assert u.m("g").read_text() == "F"


def test_rename_directory_over_opaque_directory_hiding_a_lower_one(union):
    """A directory renamed over an opaque directory that hides a lower one must hide it too
    (overlayfs, redirect_dir=on: ``d1`` is empty after this): before, the lower ``d1`` showed
    at two names at once, its ``s`` one directory inode under two parents (ESTALE from
    ``d_splice_alias`` under concurrent lookups, issue 21 item 4)."""
    (union.l1 / "d1" / "s").mkdir(parents=True)
    union.mount("timeout=0")
    os.rename(union.m("d1"), union.m("d0"))  # d0 redirects to the lower d1
    os.mkdir(union.m("d1"))  # opaque: made over the whiteout
    os.mkdir(union.m("d2"))  # plain: no lower d2
    os.rename(union.m("d2"), union.m("d1"))
    assert os.listdir(union.m("d1")) == []
    assert os.listdir(union.m("d0")) == ["s"]
    union.remount()
    assert os.listdir(union.m("d1")) == []
    assert os.listdir(union.m("d0")) == ["s"]
