"""Copy-up: what it keeps, when it happens, atomicity under SIGKILL, inode numbers, hard links."""

from __future__ import annotations

import os
import signal
import stat
import threading

import pytest

from stackfs.runtime import lifecycle

from .conftest import wait_for, write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def test_copy_up_keeps_data_holes_mode_owner_times_xattrs(union):
    u = union
    f = u.l2 / "dir" / "sparse"
    f.parent.mkdir()
    with open(f, "wb") as fh:
        fh.write(b"head")
        fh.seek(8 << 20)
        fh.write(b"tail")
    os.chown(f, 1001, 1002)
    os.chmod(f, 0o640)
    os.setxattr(f, "user.k", b"v")
    os.utime(f, ns=(111_000_000_001, 222_000_000_002))
    os.chown(f.parent, 1003, 1004)
    os.chmod(f.parent, 0o751)
    os.utime(f.parent, ns=(333_000_000_003, 444_000_000_004))
    lower_blocks = os.stat(f).st_blocks
    u.mount("timeout=0")
    ino = os.stat(u.m("dir", "sparse")).st_ino
    os.chmod(u.m("dir", "sparse"), 0o644)  # chmod copies up
    up = u.upper / "dir" / "sparse"
    st = os.stat(up)
    assert st.st_size == (8 << 20) + 4
    assert st.st_blocks <= lower_blocks + 8  # holes stayed holes
    assert (st.st_uid, st.st_gid) == (1001, 1002)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_mtime_ns == 222_000_000_002
    assert os.getxattr(up, "user.k") == b"v"
    data = up.read_bytes()
    assert data[:4] == b"head" and data[-4:] == b"tail" and data[4:100] == b"\0" * 96
    pst = os.stat(u.upper / "dir")  # the parent came up first, with its attributes
    assert (pst.st_uid, pst.st_gid, stat.S_IMODE(pst.st_mode)) == (1003, 1004, 0o751)
    assert pst.st_mtime_ns == 444_000_000_004
    assert os.stat(u.m("dir", "sparse")).st_ino == ino  # same inode number after copy-up
    assert os.listdir(u.work / "tmp") == []


@pytest.mark.parametrize(
    "op",
    [
        "open_w", "truncate", "chmod", "chown", "utime", "setxattr", "removexattr", "link",
        "rename",
    ],
)
def test_every_modification_copies_up_first(union, op):
    u = union
    write(u.l2 / "f", "lower")
    os.setxattr(u.l2 / "f", "user.x", b"1")
    # open for writing copies up at OPEN (aufs); with no_open (issue 15) at the first write
    u.mount("timeout=0", *(["no_open=off"] if op == "open_w" else []))
    f = u.m("f")
    ino = os.stat(f).st_ino
    if op == "open_w":
        open(f, "r+").close()
    elif op == "truncate":
        os.truncate(f, 2)
    elif op == "chmod":
        os.chmod(f, 0o600)
    elif op == "chown":
        os.chown(f, 5, 6)
    elif op == "utime":
        os.utime(f, (1, 2))
    elif op == "setxattr":
        os.setxattr(f, "user.y", b"2")
    elif op == "removexattr":
        os.removexattr(f, "user.x")
    elif op == "link":
        os.link(f, u.m("g"))
    elif op == "rename":
        os.rename(f, u.m("g"))
    name = "g" if op == "rename" else "f"
    assert (u.upper / name).exists()
    assert os.stat(u.m(name)).st_ino == ino
    assert (u.l2 / "f").read_text() == "lower"
    assert os.getxattr(u.l2 / "f", "user.x") == b"1"


def test_inode_numbers_stable_across_copy_up_and_remount(union):
    u = union
    write(u.l1 / "a", "a")
    write(u.l2 / "d" / "b", "b")
    u.mount("timeout=0")
    before = {p: os.stat(u.m(p)).st_ino for p in ("a", "d", "d/b", "")}
    assert len(set(before.values())) == 4
    u.m("a").write_text("changed")  # copy-up of a, and of nothing else
    u.m("d", "new").write_text("n")  # copy-up of d
    before["d/new"] = os.stat(u.m("d/new")).st_ino
    assert {p: os.stat(u.m(p)).st_ino for p in before} == before
    u.remount()
    assert {p: os.stat(u.m(p)).st_ino for p in before} == before
    assert u.m("a").read_text() == "changed"


def test_hard_links_stay_hard_links_after_write_and_remount(union):
    u = union
    write(u.l2 / "x" / "one", "old data")
    os.mkdir(u.l2 / "y")
    os.link(u.l2 / "x" / "one", u.l2 / "y" / "two")
    os.link(u.l2 / "x" / "one", u.l2 / "three")
    u.mount("timeout=0")
    names = ["x/one", "y/two", "three"]
    ino = os.stat(u.m("x/one")).st_ino
    assert [os.stat(u.m(n)).st_ino for n in names] == [ino] * 3
    assert os.stat(u.m("three")).st_nlink == 3
    with open(u.m("y/two"), "w") as f:
        f.write("new data, longer than before")
    for n in names:
        assert u.m(n).read_text() == "new data, longer than before", n
        st = os.stat(u.m(n))
        assert (st.st_ino, st.st_nlink) == (ino, 3), n
    assert (u.l2 / "x" / "one").read_text() == "old data"
    u.remount()
    for n in names:
        assert u.m(n).read_text() == "new data, longer than before", n
        st = os.stat(u.m(n))
        assert (st.st_ino, st.st_nlink) == (ino, 3), n
    os.chmod(u.m("three"), 0o600)  # another name comes up as a link, not a copy
    assert os.stat(u.upper / "three").st_ino == os.stat(u.upper / "y" / "two").st_ino
    os.unlink(u.m("x/one"))
    assert os.stat(u.m("three")).st_nlink == 2
    assert u.m("three").read_text() == "new data, longer than before"


def test_sigkill_during_large_copy_up_leaves_no_partial_file(union):
    u = union
    size = 256 << 20
    big = u.l2 / "big"
    with open(big, "wb") as f:  # real data, no holes: the copy takes a while
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    m = u.mount("timeout=0", "no_open=off")  # the copy-up at OPEN of r+b
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open(u.m("big"), "r+b").close()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=opener, daemon=True)
    t.start()

    def copying() -> bool:
        for n in os.listdir(u.work / "tmp"):
            if os.stat(u.work / "tmp" / n).st_size > 0:
                return True
        return False

    wait_for(copying, 20, "the copy-up to start writing its temporary file")
    os.kill(m.pid, signal.SIGKILL)
    t.join(10)
    assert errors  # the opener saw the daemon die
    u.stack.mounts.remove(m)
    lifecycle.unmount(m)
    # no upper name at all, or (had the copy won the race) a complete one
    up = u.upper / "big"
    assert not up.exists() or os.stat(up).st_size == size
    u.mount("timeout=0")
    assert os.listdir(u.work / "tmp") == []  # the partial copy is gone
    assert os.stat(u.m("big")).st_size == size
    with open(u.m("big"), "r+b") as f:  # now it completes
        f.seek(size - 1)
        f.write(b"!")
    assert os.stat(u.upper / "big").st_size == size


def test_copyup_aufs_over_plain_directory_skips_the_lock(union):
    u = union
    write(u.l2 / "f", "data")
    u.mount("timeout=0", "copyup=aufs")
    with open(u.m("f"), "a") as f:
        f.write("+")
    assert (u.upper / "f").read_text() == "data+"
    assert "trusted.stackfs.i_rwsem" not in os.listxattr(u.l2 / "f")


def test_copy_up_injection_point(union):
    u = union
    write(u.l2 / "f", "data")
    m = u.mount("timeout=0", "no_open=off", "inject=copy_up=error:EIO")  # copy-up at OPEN
    with pytest.raises(OSError) as ei:
        open(u.m("f"), "r+").close()
    assert ei.value.errno == 5
    assert not (u.upper / "f").exists()
    state = m.control({"op": "state"})
    point = next(p for p in state["inject"] if p["point"] == "copy_up")
    assert point["hits"] == 1


def test_write_through_a_link_whose_remembered_name_was_removed(union):
    u = union
    write(u.l2 / "a", "shared")
    os.link(u.l2 / "a", u.l2 / "b")
    u.mount("timeout=60")  # the kernel keeps its dentries: no new lookup of b below
    ino = os.stat(u.m("b")).st_ino
    assert os.stat(u.m("a")).st_ino == ino  # the union now remembers the inode as "a"
    fb = open(u.m("b"), "rb")
    os.unlink(u.m("a"))
    with open(u.m("b"), "a") as f:  # copy-up must not bring "a" back
        f.write("+b")
    assert not u.m("a").exists() and not (u.upper / "a").exists()
    assert u.m("b").read_text() == "shared+b"
    st = os.stat(u.m("b"))
    assert (st.st_ino, st.st_nlink) == (ino, 1)
    fb.close()
    u.remount()
    assert u.m("b").read_text() == "shared+b"
    assert os.stat(u.m("b")).st_ino == ino


def test_unlinked_open_file_keeps_its_attributes(mounted):
    u = mounted
    f = open(u.m("b"), "r+")
    f.write("X")
    f.flush()
    os.unlink(u.m("b"))
    u.m("b").write_text("a new file with the same name")
    assert os.fstat(f.fileno()).st_size == 4
    f.seek(0)
    assert f.read() == "X2-b"
    f.close()
    assert u.m("b").read_text() == "a new file with the same name"


def test_concurrent_writers_share_one_copy_up(union):
    u = union
    write(u.l2 / "f", "base")
    m = u.mount("timeout=0", "inject=copy_up=delay:0.5")  # keeps the first copy-up open
    barrier = threading.Barrier(4)

    def writer(i: int) -> None:
        barrier.wait()
        with open(u.m("f"), "a") as f:
            f.write(f"[{i}]")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    data = u.m("f").read_text()
    assert data.startswith("base") and sorted(data[4:].split("]")[:-1]) == [
        "[0", "[1", "[2", "[3"
    ]
    state = m.control({"op": "state"})
    point = next(p for p in state["inject"] if p["point"] == "copy_up")
    assert point["hits"] == 1  # one copy-up; the others waited for it
    assert state["daemon"]["stats"]["copy_up"] == 1
