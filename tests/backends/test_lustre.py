"""The Lustre personality (seed 002): two client mounts of one store, opens by FID, the VFS's
single ESTALE retry observed for real (the kernel sends the second OPEN, not the daemon)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from backends.intent import Intent
from backends.lustre import LustreFS
from backends.mdt import MdtLog, Request
from stackfs.runtime.service import timeout_factor

F, NEW1, NEW2 = "f", "f.new", "f.2"
FILES = {F: b"v1\n", NEW1: b"v2\n", NEW2: b"v3\n"}


# -- the variants' rules, without a mount ------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "create", "reval", "trusted"),
    [
        ("buggy", True, False, False),  # (LOOKUP_OPEN | LOOKUP_CREATE) -> 0
        ("buggy", False, False, True),
        ("buggy", False, True, True),
        ("lu-8371", True, False, True),
        ("lu-8371", True, True, False),  # LOOKUP_REVAL -> 0: by name
        ("lu-14949", False, True, False),
        ("estale-by-fid", True, True, True),
    ],
)
def test_ll_revalidate_dentry(tmp_path: Path, variant, create, reval, trusted):
    fs = LustreFS(tmp_path, variant)
    intent = Intent("openat", "x", b"f", open=True, flags=os.O_CREAT if create else 0)
    assert fs.ll_revalidate_dentry(intent, reval) is trusted


@pytest.mark.parametrize(
    ("variant", "plain", "create"),
    [
        ("buggy", errno.ENOENT, errno.ENOENT),
        ("lu-8371", errno.ENOENT, errno.ESTALE),
        ("lu-14949", errno.ESTALE, errno.ESTALE),
        ("estale-by-fid", errno.ENOENT, errno.ESTALE),
    ],
)
def test_ll_open_error(tmp_path: Path, variant, plain, create):
    fs = LustreFS(tmp_path, variant)
    assert fs.ll_open_error(os.O_RDONLY) == plain
    assert fs.ll_open_error(os.O_WRONLY | os.O_CREAT) == create


def test_mdt_log_roundtrip(tmp_path: Path):
    log = MdtLog(tmp_path)
    log.append(Request(1.0, "A", 10, "cat", "LOOKUP", "f", fid="[0x1:0x2:0x0]", open_intent=True))
    log.append(
        Request(2.0, "B", 11, "mv", "RENAME", "f", fid="[0x1:0x3:0x0]", replaced="[0x1:0x2:0x0]")
    )
    assert [r.op for r in log] == ["LOOKUP", "RENAME"]
    assert log.looked_up_for_open("[0x1:0x2:0x0]", other_than="B")
    assert not log.looked_up_for_open("[0x1:0x2:0x0]", other_than="A")
    assert "replaces [0x1:0x2:0x0]" in log.read()[1].describe()


# -- two real client mounts ----------------------------------------------------------------------


def _pair(stack, variant: str, wait: float = 1.5):
    """Client A and client B over one store, ordered by what the MDT saw (forced waits).

    Each wait ends as soon as the other client's request is in the MDT's log; ``wait`` only
    bounds a client that never comes, so it follows the machine's speed as the scenario's does."""
    mdt = stack.dir("mdt")
    wait *= timeout_factor()
    a = stack.backend(
        "lustre",
        variant=variant,
        files=FILES,
        options=[f"mdt={mdt}", "client=A", f"open_waits_rename={wait}"],
    )
    b = stack.backend(
        "lustre",
        role="lustre2",
        variant=variant,
        store_of=a,
        options=[f"mdt={mdt}", "client=B", f"rename_waits_open={wait}"],
    )
    subprocess.run(["stat", a.mnt / F], check=True, capture_output=True)
    return a, b, MdtLog(mdt)


def _race(opener: list, movers: str) -> tuple[subprocess.CompletedProcess, int]:
    p = subprocess.Popen(
        opener, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "LC_ALL": "C"}
    )
    mv = subprocess.Popen(["sh", "-c", movers])
    out, err = p.communicate(timeout=20 * timeout_factor())
    assert mv.wait(timeout=20 * timeout_factor()) == 0
    return subprocess.CompletedProcess(opener, p.returncode, out, err), p.pid


def _timeline(log: MdtLog) -> str:
    """The MDT's log, times from its first request: what to read when an assertion fails."""
    reqs = log.read()
    t0 = reqs[0].t if reqs else 0.0
    return "\n".join(
        f"{r.t - t0:8.3f} {r.client} {r.comm}[{r.tid}] {r.describe()} open_intent={r.open_intent}"
        for r in reqs
    )


def _requests(log: MdtLog, pid: int, op: str) -> list[Request]:
    return [r for r in log if r.tid == pid and r.op == op and r.name == F]


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_two_mounts_share_one_store(stackfs_stack):
    a, b, _log = _pair(stackfs_stack, "lu-14949", wait=0)
    (b.mnt / "from-b").write_text("hello\n")
    assert (a.mnt / "from-b").read_text() == "hello\n"
    assert a.mount.pid != b.mount.pid and a.store == b.store


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_vfs_retries_estale_once_and_second_estale_reaches_process(stackfs_stack):
    """estale-by-fid, contended: open(O_CREAT) by FID fails (ESTALE), the real VFS walks again
    with LOOKUP_REVAL and opens once more by FID; B's second rename lands during that retry, and
    the second ESTALE reaches dd: exactly two OPENs reached the daemon for one open(2)."""
    a, b, log = _pair(stackfs_stack, "estale-by-fid")
    res, pid = _race(
        ["dd", "if=/dev/null", f"of={a.mnt / F}", "conv=notrunc", "status=none"],
        f"mv {b.mnt / NEW1} {b.mnt / F} && mv {b.mnt / NEW2} {b.mnt / F}",
    )
    assert res.returncode == 1 and b"Stale file handle" in res.stderr, (res, _timeline(log))
    opens = _requests(log, pid, "OPEN")
    assert [(o.how, o.result) for o in opens] == [("by-fid", "ESTALE")] * 2
    lookups = _requests(log, pid, "LOOKUP")
    reval = [r for r in lookups if r.reval]
    assert reval and opens[0].t < reval[0].t < opens[1].t
    renames = [r for r in log if r.op == "RENAME" and r.client == "B"]
    assert len(renames) == 2
    assert lookups[0].t < renames[0].t < opens[0].t  # the seed's window
    assert reval[0].t < renames[1].t < opens[1].t  # "it's only once"


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_lu14949_cat_retries_by_name(stackfs_stack):
    """sanityn 31r with LU-14949: the open by FID says ESTALE, the VFS's retry opens by name
    (the intent open of the REVAL LOOKUP) and cat prints the new file."""
    a, b, log = _pair(stackfs_stack, "lu-14949")
    res, pid = _race(["cat", a.mnt / F], f"mv {b.mnt / NEW1} {b.mnt / F}")
    assert res.returncode == 0 and res.stdout == b"v2\n", (res, _timeline(log))
    opens = _requests(log, pid, "OPEN")
    assert [(o.how, o.result) for o in opens] == [("by-fid", "ESTALE"), ("intent", "ok")]


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_buggy_cat_gets_enoent(stackfs_stack):
    """The 2016 client passes the MDT's ENOENT up: no retry (one OPEN), cat fails."""
    a, b, log = _pair(stackfs_stack, "buggy")
    res, pid = _race(["cat", a.mnt / F], f"mv {b.mnt / NEW1} {b.mnt / F}")
    assert res.returncode == 1 and b"No such file or directory" in res.stderr, (
        res,
        _timeline(log),
    )
    assert [o.result for o in _requests(log, pid, "OPEN")] == ["ENOENT"]
