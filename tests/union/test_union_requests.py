"""Regression guard of issue 15: how many FUSE requests the kernel sends the union for open+close,
stat, readdir and a small copy-up, from the daemon's own per-opcode counters (``stackfs state``:
``requests``). Nothing is timed: a budget that grows means a fast path was lost (a FUSE request
costs ~25 µs of Python, so request counts are the union's speed)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from stackfs.runtime import control
from stackfs.union import fastpath

from .conftest import write

pytestmark = pytest.mark.mount

N = 20  # files in the directory that is listed


def _requests(u) -> Counter:
    return Counter(control.query(u.mp, {"op": "state"})["requests"])


def _cost(u, fn) -> Counter:
    """The FUSE requests the kernel sent while ``fn`` ran (FORGETs come when the kernel
    reclaims, not because of ``fn``: left out)."""
    before = _requests(u)
    fn()
    delta = _requests(u) - before
    delta.pop("FORGET", None)
    return +delta


def _open_close(path) -> None:
    os.close(os.open(path, os.O_RDONLY))


def _readdir(path) -> None:
    assert len(os.listdir(path)) == N


def _append(path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+")
    finally:
        os.close(fd)


#: (mount options, the budget of each operation): the fast defaults, and what a reproducer's
#: stack uses (``fastpath=off``: the seeds' kernel paths, OPEN per open, copy-up at OPEN)
CASES = {
    "fast": (
        (),
        {
            "open+close, warm": {},
            "stat, cold": {"LOOKUP": 1},
            "stat, warm": {},
            "readdir, cold": {"READDIRPLUS": 2},
            # fuse_readdir_cached revalidates the directory's mtime once per opendir
            "readdir, warm": {"GETATTR": 1},
            # the copy-up happens at the WRITE (no OPEN); GETXATTR is the kernel's
            # security.capability check of a write (file_remove_privs)
            "copy-up small": {"WRITE": 1, "GETXATTR": 1},
        },
    ),
    "fastpath=off": (
        ("fastpath=off",),
        {
            "open+close, warm": {"OPEN": 1, "RELEASE": 1},
            "stat, cold": {"LOOKUP": 1},
            "stat, warm": {},
            "readdir, cold": {"OPENDIR": 1, "READDIRPLUS": 2, "RELEASEDIR": 1},
            "readdir, warm": {"OPENDIR": 1, "GETATTR": 1, "READDIRPLUS": 2, "RELEASEDIR": 1},
            "copy-up small": {"OPEN": 1, "WRITE": 1, "GETXATTR": 1, "RELEASE": 1},
        },
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_requests_per_operation_do_not_grow(union, case):
    if case == "fast" and not fastpath.PATCHED:
        pytest.skip("pyfuse3 without the stackfs patch (run ./provision.sh): no fast paths")
    options, budget = CASES[case]
    u = union
    write(u.l1 / "open" / "f", "x")
    for i in range(N):
        write(u.l2 / "list" / f"e{i:02d}", "x")
    write(u.l1 / "stat" / "s1", "x")
    write(u.l1 / "small" / "c", "4k" * 2048)
    u.mount("timeout=60", *options)
    m = u.m
    os.stat(m("open", "f"))
    os.stat(m("stat"))
    os.stat(m("small", "c"))
    os.stat(m("list"))
    # the first OPEN, OPENDIR and FLUSH of a mount may be answered ENOSYS: once a mount
    _open_close(m("open", "f"))
    os.listdir(m("open"))
    seen = {
        "open+close, warm": _cost(u, lambda: _open_close(m("open", "f"))),
        "stat, cold": _cost(u, lambda: os.stat(m("stat", "s1"))),
        "stat, warm": _cost(u, lambda: os.stat(m("stat", "s1"))),
        "readdir, cold": _cost(u, lambda: _readdir(m("list"))),
        "readdir, warm": _cost(u, lambda: _readdir(m("list"))),
        "copy-up small": _cost(u, lambda: _append(m("small", "c"))),
    }
    assert (u.upper / "small" / "c").read_bytes().endswith(b"+")  # it was copied up
    grown = {
        op: dict(seen[op])
        for op in budget
        if any(n > budget[op].get(k, 0) for k, n in seen[op].items())
    }
    assert not grown, f"FUSE requests per operation grew ({case}): {grown}; budget {budget}"
