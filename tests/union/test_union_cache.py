"""The union's own caches (readdirplus replies kept for the attribute timeout) never hand the
kernel attributes older than a change made through the union."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def _ls(path) -> list[str]:
    names = os.listdir(path)
    assert names == os.listdir(path)  # the second listing is served from the kept replies
    return names


def test_readdir_replies_follow_changes_through_the_union(union):
    write(union.l2 / "d" / "f", "abc")
    write(union.upper / "d" / "sub" / "z", "z")
    union.mount()  # default timeouts: replies are kept
    d = union.m("d")
    with open(d / "f", "a") as f:  # copy-up (d's upper directory changes here, not later)
        f.write("d")
    time.sleep(0.1)  # a listing younger than a layer's mtime tick is not kept (SETTLE_NS)
    assert sorted(_ls(d)) == ["f", "sub"]

    os.chmod(d / "f", 0o600)
    _ls(d)
    assert os.stat(d / "f").st_mode & 0o777 == 0o600

    with open(d / "f", "a") as f:
        f.write("efg")
    _ls(d)
    assert os.stat(d / "f").st_size == 7 == (union.upper / "d" / "f").stat().st_size

    fd = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"h")
        _ls(d)  # open for writing: its reply is made again
        assert os.stat(d / "f").st_size == 8
    finally:
        os.close(fd)

    os.stat(d / "sub")
    write(d / "sub" / "new", "n")  # the subdirectory's mtime and ctime move, d's do not
    _ls(d)
    up = (union.upper / "d" / "sub").stat()
    st = os.stat(d / "sub")
    assert (st.st_mtime_ns, st.st_ctime_ns) == (up.st_mtime_ns, up.st_ctime_ns)


def test_readdir_replies_not_kept_with_timeout_0(union):
    write(union.l2 / "d" / "f", "abc")
    union.mount("timeout=0")
    d = union.m("d")
    _ls(d)
    write(union.l2 / "d" / "f", "abcdef")  # directly in the branch (udba)
    assert [e.stat().st_size for e in os.scandir(d)] == [6]
