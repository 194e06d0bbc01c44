"""The backends' shared base (:class:`~backends.base.StoreFS`, as the passthrough personality)
through its FUSE handlers, in process (see conftest.py): no mount, no root."""

from __future__ import annotations

import errno
import os

from stackfs.linux.libc import RENAME_EXCHANGE, RENAME_NOREPLACE

from .conftest import ROOT, StoreTree


async def test_lookup_read_write(store_tree: StoreTree) -> None:
    t, c = store_tree, store_tree.client
    assert await c.read("f") == b"store f"
    await c.write("f", b"S")
    assert (t.store / "f").read_bytes() == b"Store f"
    assert await c.errno_of(c.lookup("nothing")) == errno.ENOENT
    attr = await c.lookup("d/g")
    assert attr.st_size == len(b"store g")


async def test_create_and_unlink(store_tree: StoreTree) -> None:
    t, c = store_tree, store_tree.client
    await c.create("d/new", b"new")
    assert (t.store / "d" / "new").read_bytes() == b"new"
    assert await c.errno_of(c.create("d/new")) == errno.EEXIST
    await c.fs.unlink(await c.ino("d"), b"new", c.ctx)
    assert not (t.store / "d" / "new").exists()


async def test_rename_and_flags(store_tree: StoreTree) -> None:
    t, c = store_tree, store_tree.client
    await c.create("e", b"e")
    err = await c.errno_of(c.fs.rename(ROOT, b"f", ROOT, b"e", RENAME_NOREPLACE, c.ctx))
    assert err == errno.EEXIST
    await c.fs.rename(ROOT, b"f", ROOT, b"e", RENAME_EXCHANGE, c.ctx)
    assert (t.store / "e").read_bytes() == b"store f"
    assert (t.store / "f").read_bytes() == b"e"
    await c.fs.rename(ROOT, b"e", await c.ino("d"), b"moved", 0, c.ctx)
    assert await c.read("d/moved") == b"store f"
    assert not await c.exists("e")


async def test_link(store_tree: StoreTree) -> None:
    t, c = store_tree, store_tree.client
    attr = await c.fs.link(await c.ino("f"), await c.ino("d"), b"f-link", c.ctx)
    assert attr.st_nlink == 2
    assert attr.st_ino == (await c.lookup("f")).st_ino
    assert os.stat(t.store / "d" / "f-link").st_ino == os.stat(t.store / "f").st_ino


async def test_readdir(store_tree: StoreTree) -> None:
    c = store_tree.client
    await c.create("z", b"")
    assert sorted(await c.listdir("")) == [b"d", b"f", b"z"]
    for limit in (1, 2):
        assert sorted(await c.listdir("", limit=limit)) == [b"d", b"f", b"z"]
