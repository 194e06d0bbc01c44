"""Branches that are FUSE mounts: the passthrough backend as a lower branch, and a union over a
union. Also the cross-layer i_rwsem of ``copyup=aufs`` as the lower layer sees it."""

from __future__ import annotations

import os
import threading

import pytest

from stackfs.runtime import lifecycle

from .conftest import wait_for, write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def mount_backend(stack, store, mp, *extra: str) -> lifecycle.Mount:
    mp.mkdir(exist_ok=True)
    argv = lifecycle.stackfs_argv(
        "backend", "mount", "passthrough", "--store", str(store), *extra, "-f", str(mp)
    )
    return stack.mount(argv, mp)


def test_passthrough_backend_as_lower_branch(union, tmp_path):
    u = union
    store = tmp_path / "store"
    write(store / "d" / "f", "from the backend")
    write(store / "g", "g")
    os.link(store / "g", store / "d" / "g-link")
    write(u.l1 / "d" / "e", "from l1")
    fuse_lower = tmp_path / "lower-mnt"
    mount_backend(u.stack, store, fuse_lower)
    u.mount("timeout=0", lowers=[u.l1, fuse_lower])
    assert sorted(os.listdir(u.m("d"))) == ["e", "f", "g-link"]
    assert u.m("d", "f").read_text() == "from the backend"
    u.m("d", "f").write_text("changed")  # copy-up from a FUSE branch
    assert (u.upper / "d" / "f").read_text() == "changed"
    assert (store / "d" / "f").read_text() == "from the backend"
    os.unlink(u.m("g"))
    assert not u.m("g").exists() and (u.upper / ".wh.g").exists()
    with open(u.m("d", "g-link"), "a") as f:
        f.write("+")
    assert u.m("d", "g-link").read_text() == "g+"
    os.rename(u.m("d"), u.m("d2"))
    assert sorted(os.listdir(u.m("d2"))) == ["e", "f", "g-link"]
    u.remount()
    assert u.m("d2", "f").read_text() == "changed"
    assert u.m("d2", "g-link").read_text() == "g+"


@pytest.mark.parametrize("mode", ["aufs", "aufs-unlock"])
def test_copyup_aufs_takes_the_lower_inode_lock_in_one_thread(union, tmp_path, mode):
    u = union
    store = tmp_path / "store"
    write(store / "f", "data")
    fuse_lower = tmp_path / "lower-mnt"
    lower = mount_backend(u.stack, store, fuse_lower)
    # The copy-up waits at its injection point (a barrier of 2 that only this one copy-up
    # reaches) until the test has looked at the lock and releases it: no timed window.
    m = u.mount("timeout=0", f"copyup={mode}", "inject=copy_up=barrier:2:120",
                lowers=[fuse_lower])
    done = threading.Event()

    def writer() -> None:
        try:
            with open(u.m("f"), "a") as f:
                f.write("+")
        finally:
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()

    def holder():
        for lk in lower.control({"op": "state"})["locks"]:
            if lk["name"] == "i_rwsem" and lk["holders"]:
                return lk["holders"][0]
        return None

    wait_for(lambda: holder() is not None, 30, "the union to lock the lower inode")
    h = holder()
    assert h["mode"] == "write"
    # the holder is a worker thread of the union daemon
    assert str(h["task"]["pid"]) in os.listdir(f"/proc/{m.pid}/task")
    assert not done.is_set()  # still held at the injection point
    m.control({"op": "inject", "point": "copy_up", "action": "off"})  # let the copy-up go on
    t.join(30)
    assert done.is_set()
    assert holder() is None  # released after the copy
    assert (u.upper / "f").read_text() == "data+"
    # the lower layer saw no recursive locking (its open does not take i_rwsem)
    assert not [e for e in lower.control({"op": "state"})["events"]
                if e["type"] == "recursive_locking"]


def test_plain_copyup_takes_no_lower_lock(union, tmp_path):
    u = union
    store = tmp_path / "store"
    write(store / "f", "data")
    fuse_lower = tmp_path / "lower-mnt"
    lower = mount_backend(u.stack, store, fuse_lower)
    # the copy-up at OPEN of open("a") (no_open=off: issue 15's fast path copies up at a write)
    u.mount("timeout=0", "no_open=off", "inject=copy_up=delay:0.5", lowers=[fuse_lower])
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            u.m("f").open("a").close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=opener, daemon=True)
    t.start()
    seen = []
    while t.is_alive():
        seen += [lk for lk in lower.control({"op": "state"})["locks"] if lk["holders"]]
        t.join(0.05)
    assert not errors, errors
    assert seen == []
    assert (u.upper / "f").read_text() == "data"


def test_union_over_union(union, tmp_path):
    u = union
    # the lower union: its own upper over two plain branches
    lu, ll1, ll2, lw, lmp = (tmp_path / n for n in ("lu", "ll1", "ll2", "lw", "lmp"))
    for p in (lu, ll1, ll2, lw, lmp):
        p.mkdir()
    write(ll1 / "shared", "lower-union l1")
    write(ll2 / "shared", "lower-union l2")
    write(ll2 / "deep" / "f", "deep")
    write(ll2 / "gone", "gone")
    opts = f"lowerdir={ll1}:{ll2},upperdir={lu},workdir={lw},timeout=0"
    u.stack.mount(lifecycle.stackfs_argv("mount", "-o", opts, "-f", str(lmp)), lmp)
    os.unlink(lmp / "gone")  # a whiteout in the lower union's upper
    write(u.l1 / "top", "top")
    u.mount("timeout=0", "copyup=aufs", lowers=[u.l1, lmp])
    assert sorted(os.listdir(u.m())) == ["deep", "shared", "top"]
    assert u.m("shared").read_text() == "lower-union l1"
    ino = os.stat(u.m("deep", "f")).st_ino
    u.m("deep", "f").write_text("changed at the top")
    assert os.stat(u.m("deep", "f")).st_ino == ino
    assert (u.upper / "deep" / "f").read_text() == "changed at the top"
    assert (lmp / "deep" / "f").read_text() == "deep"
    os.unlink(u.m("shared"))
    assert not u.m("shared").exists()
    assert (lmp / "shared").read_text() == "lower-union l1"
    os.rename(u.m("deep"), u.m("deeper"))
    assert u.m("deeper", "f").read_text() == "changed at the top"
