"""The union's copy-up, whiteout, rename, link and readdir logic through its FUSE handlers,
in process (see conftest.py): no mount, no root."""

from __future__ import annotations

import errno
import os

import pyfuse3

from stackfs.linux.libc import RENAME_EXCHANGE, RENAME_NOREPLACE
from stackfs.union.whiteout import WH_PREFIX

from .conftest import ROOT, UnionTree


async def test_lookup_merges_the_branches(union_tree: UnionTree) -> None:
    c = union_tree.client
    assert await c.read("both") == b"upper both"  # the upper branch hides the lower
    assert await c.read("f") == b"lower f"
    assert await c.read("d/g") == b"lower g"
    assert await c.errno_of(c.lookup("nothing")) == errno.ENOENT


async def test_open_for_write_copies_up(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    assert not (t.upper / "f").exists()
    await c.write("f", b"LOWER", 0)
    assert (t.upper / "f").read_bytes() == b"LOWER f"  # copied up, then written
    assert (t.lower / "f").read_bytes() == b"lower f"  # a read-only branch is never written
    assert await c.read("f") == b"LOWER f"


async def test_copy_up_in_a_lower_directory_copies_the_parents(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    await c.write("d/g", b"G")
    assert (t.upper / "d" / "g").read_bytes() == b"Gower g"
    assert not (t.upper / "d" / "h").exists()  # only the path, not the siblings
    await c.create("d/new", b"new")
    assert (t.upper / "d" / "new").read_bytes() == b"new"
    assert sorted(await c.listdir("d")) == [b"g", b"h", b"new"]


async def test_unlink_of_a_lower_file_leaves_a_whiteout(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    await c.fs.unlink(ROOT, b"f", c.ctx)
    assert not await c.exists("f")
    assert (t.lower / "f").exists()
    assert (t.upper / (WH_PREFIX + b"f").decode()).exists()
    assert b"f" not in await c.listdir("")
    # a new file of that name hides the lower one for good
    await c.create("f", b"new f")
    assert await c.read("f") == b"new f"


async def test_rmdir_of_a_lower_directory(union_tree: UnionTree) -> None:
    c = union_tree.client
    d = await c.ino("d")
    assert await c.errno_of(c.fs.rmdir(ROOT, b"d", c.ctx)) == errno.ENOTEMPTY
    await c.fs.unlink(d, b"g", c.ctx)
    await c.fs.unlink(d, b"h", c.ctx)
    assert await c.listdir("d") == []
    await c.fs.rmdir(ROOT, b"d", c.ctx)
    assert not await c.exists("d")
    await c.fs.mkdir(ROOT, b"d", 0o755, c.ctx)
    assert await c.listdir("d") == []  # the new directory is opaque: nothing shows through


async def test_rename_of_a_lower_file(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    await c.fs.rename(ROOT, b"f", ROOT, b"g", 0, c.ctx)
    assert not await c.exists("f")
    assert await c.read("g") == b"lower f"
    assert (t.lower / "f").read_bytes() == b"lower f"
    names = await c.listdir("")
    assert b"g" in names and b"f" not in names


async def test_rename_flags(union_tree: UnionTree) -> None:
    c = union_tree.client
    err = await c.errno_of(c.fs.rename(ROOT, b"f", ROOT, b"both", RENAME_NOREPLACE, c.ctx))
    assert err == errno.EEXIST
    await c.fs.rename(ROOT, b"f", ROOT, b"both", RENAME_EXCHANGE, c.ctx)
    assert await c.read("both") == b"lower f"
    assert await c.read("f") == b"upper both"
    err = await c.errno_of(c.fs.rename(ROOT, b"f", ROOT, b"nothing", RENAME_EXCHANGE, c.ctx))
    assert err == errno.ENOENT


async def test_rename_of_a_lower_directory(union_tree: UnionTree) -> None:
    c = union_tree.client
    await c.fs.rename(ROOT, b"d", ROOT, b"e", 0, c.ctx)
    assert not await c.exists("d")
    assert sorted(await c.listdir("e")) == [b"g", b"h"]
    assert await c.read("e/h") == b"lower h"


async def test_link_of_a_lower_file(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    attr = await c.fs.link(await c.ino("f"), ROOT, b"f2", c.ctx)
    assert attr.st_nlink == 2
    assert (await c.lookup("f")).st_ino == (await c.lookup("f2")).st_ino
    await c.write("f2", b"F")
    assert await c.read("f") == b"Fower f"  # one file under two names
    assert os.stat(t.upper / "f").st_ino == os.stat(t.upper / "f2").st_ino


async def test_readdir_merges_and_resumes(union_tree: UnionTree) -> None:
    c = union_tree.client
    want = [b"both", b"d", b"f", b"u"]
    assert sorted(await c.listdir("")) == want  # each name once, the workdir hidden
    for limit in (1, 2, 3):  # a reply buffer that fills up: the kernel asks again at offset
        assert sorted(await c.listdir("", limit=limit)) == want


async def test_readdir_attributes_are_the_lookups(union_tree: UnionTree) -> None:
    c = union_tree.client
    by_name = {n: a for n, a, _o in await c.readdir("")}
    for name in (b"both", b"f", b"d"):
        looked = await c.lookup(name.decode())
        assert by_name[name].st_ino == looked.st_ino
        assert by_name[name].st_mode == looked.st_mode


async def test_getattr_after_write_sees_the_upper_copy(union_tree: UnionTree) -> None:
    c = union_tree.client
    before = await c.lookup("f")
    await c.write("f", b"longer than before", 0)
    after = await c.fs.getattr(before.st_ino, c.ctx)
    assert after.st_size == len(b"longer than before")
    assert isinstance(after, pyfuse3.EntryAttributes)


class Fields:
    """A stand-in for ``pyfuse3.SetattrFields``: which attributes a SETATTR changes."""

    def __init__(self, **changed: bool) -> None:
        for name in ("atime", "mtime", "ctime", "mode", "uid", "gid", "size"):
            setattr(self, f"update_{name}", changed.get(name, False))


async def test_truncate_and_chmod_of_a_lower_file_copy_it_up(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    ino = await c.ino("f")
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 3
    got = await c.fs.setattr(ino, attr, Fields(size=True), None, c.ctx)
    assert got.st_size == 3
    assert (t.upper / "f").read_bytes() == b"low"
    assert (t.lower / "f").read_bytes() == b"lower f"
    attr.st_mode = 0o100600
    got = await c.fs.setattr(await c.ino("d/g"), attr, Fields(mode=True), None, c.ctx)
    assert got.st_mode & 0o777 == 0o600
    assert os.stat(t.upper / "d" / "g").st_mode & 0o777 == 0o600
    assert os.stat(t.lower / "d" / "g").st_mode & 0o777 != 0o600


async def test_symlink_in_a_lower_directory(union_tree: UnionTree) -> None:
    t, c = union_tree, union_tree.client
    os.symlink("g", t.lower / "d" / "to-g")
    assert await c.fs.readlink(await c.ino("d/to-g"), c.ctx) == b"g"
    await c.fs.symlink(await c.ino("d"), b"to-h", b"h", c.ctx)
    assert os.readlink(t.upper / "d" / "to-h") == "h"
    assert sorted(await c.listdir("d")) == [b"g", b"h", b"to-g", b"to-h"]
