"""Concurrent directory operations through the union give no ESTALE or EIO (issue 21, item 4).

The branches are on ext4 (``tmp_path``), which hands a freed inode number to the next new inode
at once. Before the fix a new object took the node id of a removed one the kernel still held:
the kernel's ``fuse_iget`` found its old inode under that id (same generation, same type) and
reused it, dead (``S_DEAD`` from the ``rmdir``) and with its old dentry as an alias
(``d_splice_alias`` -> ``__d_unalias``: ESTALE under contention); and a GETATTR of the removed
object answered with whatever had taken its name (a file: ``fuse_do_getattr`` finds the wrong
type, ``fuse_make_bad``, EIO from then on).
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from stackfs.union import dirstress

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]


def _reuse_upper_ino(union, held: str, fresh: str) -> tuple[int, int]:
    """mkdir ``held``, open it, rmdir it, mkdir ``fresh`` until the upper branch gives ``fresh``
    the inode number ``held`` had. Returns (fd of the removed directory, its st_ino)."""
    for _ in range(50):
        os.mkdir(union.m(held))
        ino = os.stat(union.upper / held).st_ino
        fd = os.open(union.m(held), os.O_RDONLY | os.O_DIRECTORY)
        st_ino = os.fstat(fd).st_ino
        os.rmdir(union.m(held))
        os.mkdir(union.m(fresh))
        if os.stat(union.upper / fresh).st_ino == ino:
            return fd, st_ino
        os.close(fd)
        os.rmdir(union.m(fresh))
    pytest.skip("the upper filesystem did not reuse a freed inode number")


@pytest.mark.parametrize("options", ["default", "timeout=0"])
def test_new_directory_on_a_reused_inode_number(union, options):
    """A directory made on the inode number of a removed one the kernel still holds (an open
    fd) is a new, live directory: its own st_ino, and names can be made in it."""
    union.mount(*([] if options == "default" else [options]))
    os.mkdir(union.m("a"))
    os.mkdir(union.m("b"))
    fd, old_ino = _reuse_upper_ino(union, "a/x", "b/y")
    try:
        assert os.stat(union.m("b/y")).st_ino != old_ino
        os.mkdir(union.m("b/y/z"))  # ENOENT before: the kernel reused the dead inode
        assert os.listdir(union.m("b/y")) == ["z"]
    finally:
        os.close(fd)
    # the number stays the directory's after a remount (recorded in the xino table)
    ino = os.stat(union.m("b/y")).st_ino
    union.remount()
    assert os.stat(union.m("b/y")).st_ino == ino
    assert os.listdir(union.m("b/y")) == ["z"]


@pytest.mark.parametrize("whiteout", ["aufs", "overlay"])
def test_removed_directory_is_not_answered_for_by_its_name(union, whiteout):
    """GETATTR and SETATTR of a removed directory the kernel still holds never reach the
    object that took its name (a file: EIO before, the kernel saw the type change)."""
    union.mount("timeout=0", f"whiteout={whiteout}")
    os.mkdir(union.m("a"))
    fd = os.open(union.m("a"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(union.m("a"))
        union.m("a").write_bytes(b"")
        os.chmod(union.m("a"), 0o600)
        for call in (lambda: os.fstat(fd), lambda: os.fchmod(fd, 0o700)):
            with pytest.raises(FileNotFoundError):
                call()
        assert os.stat(union.m("a")).st_mode == 0o100600  # untouched by the fchmod
    finally:
        os.close(fd)


def test_copy_up_against_a_rename_of_its_parent(union):
    """A copy-up (held 1 s at the ``copy_up`` injection point) and a rename of its parent
    directory, which the kernel does not serialise (``vfs_rename`` does not lock the moved
    directory): the rename waits for the copy-up (the union's rename gate), so the copy lands
    in the moved directory, not in a new directory made at the old name (before: ``d1`` showed
    ``f``, the chmod failed with ENOENT and the moved ``f`` kept its mode)."""
    (union.l1 / "d1").mkdir()
    (union.l1 / "d1" / "f").write_bytes(b"x" * 100)
    union.mount("timeout=0", "inject=copy_up=delay:1")
    os.mkdir(union.m("d1", "x"))  # d1 has its upper directory
    errors: list[OSError] = []

    def chmod() -> None:
        try:
            os.chmod(union.m("d1", "f"), 0o600)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=chmod)
    t.start()
    assert union.mount_obj is not None
    deadline = time.monotonic() + 5
    while not any(
        p["point"] == "copy_up" and p["hits"]
        for p in union.mount_obj.control({"op": "state"})["inject"]
    ):
        assert time.monotonic() < deadline, "the copy-up did not reach its injection point"
        time.sleep(0.01)
    os.rename(union.m("d1"), union.m("d3"))
    os.mkdir(union.m("d1"))
    t.join(10)
    assert errors == []
    assert os.listdir(union.m("d1")) == []
    assert sorted(os.listdir(union.m("d3"))) == ["f", "x"]
    assert os.stat(union.m("d3", "f")).st_mode == 0o100600


def test_concurrent_directory_operations(union):
    """8 processes: mkdir, rmdir, rename, stat, chmod on overlapping names, some of them in the
    lower branch too, ~15 s: every errno is one a POSIX filesystem gives (never ESTALE, EIO)."""
    (union.l1 / "stress" / "d0").mkdir(parents=True)
    (union.l1 / "stress" / "d1" / dirstress.SUB).mkdir(parents=True)
    union.mount()
    rep = dirstress.run(str(union.m("stress")), procs=8, seconds=15, ops=400_000)
    assert rep.ops > 1000, dirstress.format_report("stackfs", rep)
    assert rep.unexpected() == {}, dirstress.format_report("stackfs", rep)
    assert {"EEXIST", "ENOENT", "ENOTEMPTY"} <= set(rep.errors())
    assert rep.counts[("mkdir", "ok")] and rep.counts[("rename", "ok")]


def test_report_counts_unexpected_errnos():
    rep = dirstress.Report(ops=3)
    rep.counts.update({("mkdir", "EEXIST"): 1, ("stat", "ESTALE"): 2, ("chmod", "ok"): 1})
    assert rep.unexpected() == {"stat: ESTALE": 2}
    assert rep.errors() == {"EEXIST": 1, "ESTALE": 2}
    assert errno.EIO not in dirstress.EXPECTED
