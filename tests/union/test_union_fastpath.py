"""The union's semantics under the kernel fast paths of issue 15 (``no_open``: no OPEN, I/O by
inode): copy-up at the first write instead of at open, O_TRUNC, an unlinked open file, the
page cache across a copy-up, and ``fastpath=off`` keeping the copy-up at OPEN."""

from __future__ import annotations

import os

import pytest

from stackfs.runtime import control
from stackfs.union import fastpath

from .conftest import write

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not fastpath.PATCHED, reason="pyfuse3 without the stackfs patch"),
]


def _fast(u) -> dict:
    return control.query(u.mp, {"op": "state"})["daemon"]["fastpath"]


@pytest.mark.timeout(60)
def test_copy_up_at_first_write_not_at_open(union):
    u = union
    write(u.l2 / "f", "lower")
    u.mount("timeout=60")
    assert _fast(u)["no_open"]
    fd = os.open(u.m("f"), os.O_WRONLY)
    assert u.m("f").read_bytes() == b"lower"
    assert not (u.upper / "f").exists()  # opened for writing, nothing written: no copy-up
    os.pwrite(fd, b"L", 0)
    os.close(fd)
    assert (u.upper / "f").read_bytes() == b"Lower"
    assert (u.l2 / "f").read_bytes() == b"lower"
    assert u.m("f").read_bytes() == b"Lower"  # the kernel's cached pages were the lower's


@pytest.mark.timeout(60)
def test_o_trunc_truncates_without_open(union):
    u = union
    write(u.l2 / "f", "0123456789")
    u.mount("timeout=60")
    assert u.m("f").read_bytes() == b"0123456789"
    with open(u.m("f"), "wb") as f:  # O_TRUNC: a SETATTR, not an atomic OPEN
        f.write(b"ab")
    assert u.m("f").read_bytes() == b"ab"
    assert (u.upper / "f").read_bytes() == b"ab"
    assert (u.l2 / "f").read_bytes() == b"0123456789"


@pytest.mark.timeout(60)
def test_unlinked_open_file_still_reads_and_writes(union):
    u = union
    u.mount("timeout=60")
    p = u.m("tmp")
    p.write_bytes(b"scratch")
    fd = os.open(p, os.O_RDWR)
    os.unlink(p)
    assert not p.exists() and not (u.upper / "tmp").exists()
    assert os.pread(fd, 7, 0) == b"scratch"
    os.pwrite(fd, b"S", 0)
    os.fsync(fd)
    assert os.pread(fd, 7, 0) == b"Scratch"
    os.close(fd)


@pytest.mark.timeout(60)
def test_file_renamed_over_keeps_its_data_for_an_open_fd(union):
    u = union
    write(u.upper / "a", "old data")
    write(u.upper / "b", "new")
    u.mount("timeout=60")
    fd = os.open(u.m("a"), os.O_RDONLY)  # no OPEN, and nothing read or written through it yet
    os.rename(u.m("b"), u.m("a"))
    assert os.pread(fd, 8, 0) == b"old data"
    os.close(fd)
    assert u.m("a").read_bytes() == b"new"


@pytest.mark.timeout(60)
def test_fastpath_off_copies_up_at_open(union):
    u = union
    write(u.l2 / "f", "lower")
    u.mount("timeout=60", "fastpath=off")
    assert not any(v for k, v in _fast(u).items() if k != "pyfuse3_patched")
    os.close(os.open(u.m("f"), os.O_WRONLY))
    assert (u.upper / "f").read_bytes() == b"lower"  # aufs: copy-up at open


@pytest.mark.timeout(60)
def test_writeback_cache_keeps_copy_up_append_and_mtime(union):
    """``writeback_cache=on``: the kernel caches writes and writes them back at close at the
    latest (``fuse_flush``), positions appends itself, and reads through write-only files."""
    u = union
    write(u.l2 / "f", "lower")
    u.mount("timeout=60", "writeback_cache=on")
    assert _fast(u)["writeback_cache"]
    before = os.stat(u.m("f")).st_mtime_ns
    fd = os.open(u.m("f"), os.O_WRONLY | os.O_APPEND)
    for _ in range(3):
        os.write(fd, b"+" * 1000)  # small writes: cached, written back in one go
    os.close(fd)
    want = b"lower" + b"+" * 3000
    assert (u.upper / "f").read_bytes() == want  # copied up, then appended at the end
    assert (u.l2 / "f").read_bytes() == b"lower"
    assert u.m("f").read_bytes() == want
    assert os.stat(u.m("f")).st_mtime_ns > before
    with open(u.m("new"), "wb") as f:  # a new file, written back at close
        f.write(b"n" * 5000)
    assert (u.upper / "new").read_bytes() == b"n" * 5000
    assert os.stat(u.m("new")).st_size == 5000
