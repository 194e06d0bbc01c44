"""The NFS personality (seeds 002, 003) on real mounts, with real processes.

* Three processes open one name whose negative dentry is stale (another client made it a
  directory), while a barrier at nfs_atomic_open forces them in together: ``buggy`` records
  seed 003's oops (d_splice_alias on a hashed dentry, from nfs_lookup from nfs_atomic_open,
  naming the processes) on every attempt; ``fixed`` and ``parallel-lookup`` never do, over 100
  forced attempts.
* ESTALE reaches a process only when the VFS's single retry cannot help.
* The NFS client's caches: negative dentries, attribute cache, close-to-open.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackfs.repro.scenario import forced_barrier
from stackfs.runtime import control, lifecycle
from stackfs.runtime.service import timeout_factor

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]
#: a forcing barrier's bound (an opener that never comes), on this machine
BOUND = 5 * timeout_factor()
FORCED = "inject=" + forced_barrier("nfs_atomic_open", 3)

#: a long-lived opener: named by argv[1] (its comm), opens each path read from stdin
OPENER = r"""
import ctypes, errno, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME: its comm
print("ready", flush=True)
for line in sys.stdin:
    try:
        os.close(os.open(line.rstrip("\n"), os.O_RDONLY))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno), flush=True)
"""


class Openers:
    """N processes that open the same path at the same time (as far as the kernel lets them)."""

    def __init__(self, cwd: Path, reaper: list, n: int = 3) -> None:
        self.names = [f"opener-{i}" for i in range(1, n + 1)]
        self.procs = [
            subprocess.Popen([sys.executable, "-c", OPENER, name], cwd=cwd, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for name in self.names
        ]
        reaper.extend(self.procs)
        for p in self.procs:
            assert p.stdout.readline().strip() == "ready"

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def open_all(self, path: str) -> list[str]:
        for p in self.procs:
            p.stdin.write(path + "\n")
            p.stdin.flush()
        return [p.stdout.readline().strip() for p in self.procs]



def _server(m: lifecycle.Mount, action: str, *args: str) -> None:
    control.query(m.mountpoint, {"op": "server", "action": action, "args": list(args)})


def _state(m: lifecycle.Mount) -> dict:
    return m.control({"op": "state"})


def _events(m: lifecycle.Mount, kind: str) -> list[dict]:
    return [e for e in _state(m)["events"] if e["type"] == kind]


def _stale_negative_dentry(m: lifecycle.Mount, i: int) -> str:
    """Set up attempt ``i``: ``a{i}/d`` has a negative dentry in the client's dcache, but on the
    server it is a directory (another client made it), and the kernel holds a positive dentry
    for it (READDIRPLUS; the client's model dcache is untouched, as with nordirplus), so that
    every open of it makes the kernel send a revalidating LOOKUP, in parallel."""
    parent = m.mountpoint / f"a{i}"
    parent.mkdir()
    with pytest.raises(FileNotFoundError):
        os.stat(parent / "d")  # the client caches the negative dentry
    _server(m, "mkdir", f"a{i}/d")
    with pytest.raises(FileNotFoundError):
        os.stat(parent / "d")  # still negative for this client (acdirmin)
    assert os.listdir(parent) == ["d"]
    return f"a{i}/d"


SEED_CHAIN = ["do_filp_open", "path_openat", "lookup_open", "nfs_atomic_open", "nfs_lookup",
              "d_splice_alias"]


def _is_seed_oops(event: dict, openers: Openers) -> bool:
    detail = event["detail"]
    first = event["tasks"][0]
    chain = first["chain"]
    return (
        detail["function"] == "d_splice_alias"
        and detail["assertion"] == "BUG_ON(!d_unhashed(dentry))"
        and detail["dentry"]["name"] == "d"
        and chain[-len(SEED_CHAIN):] == SEED_CHAIN
        and all(t["pid"] in openers.pids for t in event["tasks"])
        and all(t["comm"] in openers.names for t in event["tasks"])
    )


def test_buggy_oopses_on_every_forced_attempt(mount_backend, reaper):
    m = mount_backend("nfs", "--variant", "buggy", "-o", FORCED)
    openers = Openers(m.mountpoint, reaper)
    for i in range(5):
        path = _stale_negative_dentry(m, i)
        before = len(_events(m, "oops"))
        results = openers.open_all(path)
        oopses = _events(m, "oops")[before:]
        assert oopses, f"attempt {i}: no oops"
        assert all(_is_seed_oops(e, openers) for e in oopses), oopses
        # each racing opener hit the BUG; the first report names all three
        assert {e["tasks"][0]["pid"] for e in oopses} == openers.pids
        assert {t["pid"] for t in oopses[0]["tasks"]} == openers.pids
        assert results == ["EIO"] * 3
    state = _state(m)
    assert not [e for e in state["events"] if e["type"] == "barrier_timeout"]
    # the daemon kept serving
    (m.mountpoint / "after").write_text("still serving")
    assert (m.mountpoint / "after").read_text() == "still serving"
    # the same failing opens, as `cat`: the oops names the real processes
    if subprocess.run(["which", "cat"], capture_output=True).returncode == 0:
        path = _stale_negative_dentry(m, 99)
        before = len(_events(m, "oops"))
        cats = [subprocess.Popen(["cat", path], cwd=m.mountpoint, stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
        reaper.extend(cats)
        errs = [c.communicate(timeout=20 * timeout_factor())[1] for c in cats]
        assert all("Input/output error" in e for e in errs), errs
        oopses = _events(m, "oops")[before:]
        assert {e["tasks"][0]["pid"] for e in oopses} == {c.pid for c in cats}
        assert all(t["comm"] == "cat" for e in oopses for t in e["tasks"])


@pytest.mark.parametrize("variant", ["fixed", "parallel-lookup"])
def test_fixed_variants_never_oops_over_100_forced_attempts(mount_backend, reaper, variant):
    m = mount_backend("nfs", "--variant", variant, "-o", FORCED)
    openers = Openers(m.mountpoint, reaper)
    for i in range(100):
        path = _stale_negative_dentry(m, i)
        assert openers.open_all(path) == ["ok"] * 3, f"attempt {i}"
    state = _state(m)
    assert not [e for e in state["events"] if e["type"] in ("oops", "barrier_timeout")]
    [point] = [p for p in state["inject"] if p["point"] == "nfs_atomic_open"]
    assert point["hits"] == 300  # all three openers entered nfs_atomic_open, every attempt
    stats = state["daemon"]["stats"]
    if variant == "parallel-lookup":
        assert stats["open_context"] == 100  # one open_context per name: the others waited
    else:
        assert stats["open_context"] == 300


def test_fixed_races_when_the_lookup_window_is_forced(mount_backend, reaper):
    """Seed 003 itself: with d_drop on every error (4.7-rc3) two openers of one hashed negative
    dentry that both d_drop before either splices still hit the BUG. Forcing both into
    nfs_atomic_open with the same dentry, and both into nfs_lookup's round trip, shows it."""
    m = mount_backend("nfs", "--variant", "fixed")
    openers = Openers(m.mountpoint, reaper, n=2)
    path = _stale_negative_dentry(m, 0)
    for point in ("nfs_atomic_open", "nfs_lookup"):
        control.query(m.mountpoint, {"op": "inject", "point": point,
                                     "action": f"barrier:2:{BOUND:g}"})
    assert sorted(openers.open_all(path)) == ["EIO", "ok"]
    [oops] = _events(m, "oops")
    assert _is_seed_oops(oops, openers)


def test_parallel_lookup_survives_the_forced_lookup_window(mount_backend, reaper):
    m = mount_backend("nfs", "--variant", "parallel-lookup")
    openers = Openers(m.mountpoint, reaper, n=2)
    path = _stale_negative_dentry(m, 0)
    control.query(m.mountpoint, {"op": "inject", "point": "nfs_lookup",
                                 "action": "barrier:2:0.5"})
    assert openers.open_all(path) == ["ok", "ok"]
    state = _state(m)
    assert not [e for e in state["events"] if e["type"] == "oops"]
    # the second opener waited in d_alloc_parallel: the barrier never saw two lookups
    [timeout] = [e for e in state["events"] if e["type"] == "barrier_timeout"]
    assert timeout["detail"]["point"] == "nfs_lookup" and timeout["detail"]["arrived"] == 1


# -- ESTALE ----------------------------------------------------------------------------------------


def test_estale_is_retried_once_by_the_vfs(mount_backend):
    """Another client replaces a file the kernel has cached: the OPEN by the old handle gets
    ESTALE, the VFS walks again with LOOKUP_REVAL, and the process never sees ESTALE."""
    m = mount_backend("nfs", "--variant", "fixed", "-o", "entry_timeout=60")
    f = m.mountpoint / "f"
    f.write_text("old")
    assert f.read_text() == "old"
    _server(m, "write", "g", "new content")
    _server(m, "rename", "g", "f")
    before = _state(m)["daemon"]["stats"]
    assert f.read_text() == "new content"
    after = _state(m)["daemon"]["stats"]
    # one ESTALE (for the old handle: its permission check or its OPEN), then the walk again
    # with a fresh LOOKUP, and one OPEN of the new handle
    assert after.get("estale", 0) == before.get("estale", 0) + 1
    assert after["open_by_handle"] - before["open_by_handle"] in (1, 2)
    assert after["lookup"] > before["lookup"]


def test_estale_reaches_the_process_when_the_retry_cannot_help(mount_backend, reaper):
    """The object is replaced again between the retried LOOKUP and OPEN (seed 002's contended
    file): the single retry is used up and open(2) fails with ESTALE."""
    m = mount_backend("nfs", "--variant", "fixed", "-o", "entry_timeout=60")
    f = m.mountpoint / "f"
    f.write_text("v0")
    assert f.read_text() == "v0"
    control.query(m.mountpoint, {"op": "inject", "point": "nfs_open", "action": "delay:2"})
    [point] = [p for p in _state(m)["inject"] if p["point"] == "nfs_open"]
    base = point["hits"]
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import os\ntry:\n    os.open('f', os.O_RDONLY); print('ok')\n"
         "except OSError as e:\n    print(e.errno)"],
        cwd=m.mountpoint, stdout=subprocess.PIPE, text=True,
    )
    reaper.append(proc)
    try:
        for round_ in (1, 2):
            # wait until the OPEN (round 2: the VFS's retry) waits at nfs_open, then replace
            deadline = time.monotonic() + 10 * timeout_factor()
            while True:
                [point] = [p for p in _state(m)["inject"] if p["point"] == "nfs_open"]
                if point["hits"] == base + round_ and point["waiting"]:
                    break
                assert time.monotonic() < deadline, f"no OPEN in round {round_}: {point}"
                time.sleep(0.01)
            _server(m, "write", f"g{round_}", f"v{round_}")
            _server(m, "rename", f"g{round_}", "f")
        out, _ = proc.communicate(timeout=20 * timeout_factor())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == str(errno.ESTALE)
    assert _state(m)["daemon"]["stats"]["estale"] == 2
    control.query(m.mountpoint, {"op": "inject", "point": "nfs_open", "action": "off"})
    assert f.read_text() == "v2"  # nothing contends any more: the retry helps again


def test_read_of_a_file_another_client_deleted_is_estale(mount_backend):
    m = mount_backend("nfs", "--variant", "fixed")
    f = m.mountpoint / "f"
    f.write_text("data")
    fd = os.open(f, os.O_RDONLY)
    try:
        _server(m, "unlink", "f")
        with pytest.raises(OSError) as exc:
            os.pread(fd, 10, 0)
        assert exc.value.errno == errno.ESTALE  # no retry for read(2)
    finally:
        os.close(fd)
    assert not f.exists()  # the path walk retries: the name is simply gone
    # a file the client itself unlinks while open stays readable (silly rename)
    g = m.mountpoint / "g"
    g.write_text("mine")
    fd = os.open(g, os.O_RDONLY)
    try:
        os.unlink(g)
        assert os.pread(fd, 10, 0) == b"mine"
    finally:
        os.close(fd)


# -- the client's caches ---------------------------------------------------------------------------


def test_negative_dentries_attribute_cache_and_close_to_open(mount_backend):
    m = mount_backend("nfs", "--variant", "fixed", "-o", "acregmin=0.4,acdirmin=0.4")
    mp = m.mountpoint
    # negative dentry: a name another client creates stays invisible for acdirmin
    assert not (mp / "new").exists()
    _server(m, "write", "new", "x")
    t0 = time.monotonic()
    assert not (mp / "new").exists()
    while not (mp / "new").exists():
        assert time.monotonic() - t0 < 5
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.3
    # attribute cache: another client's size change is seen after acregmin
    f = mp / "f"
    f.write_bytes(b"12345")
    assert os.stat(f).st_size == 5
    _server(m, "write", "f", "1234567890")
    t0 = time.monotonic()
    assert os.stat(f).st_size == 5
    while os.stat(f).st_size != 10:
        assert time.monotonic() - t0 < 5
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.3
    # close-to-open: open revalidates, so the new data is read at once, cached pages or not
    g = mp / "g"
    g.write_bytes(b"aaaa")
    assert g.read_bytes() == b"aaaa"
    _server(m, "write", "g", "bbbbbbbb")
    assert os.stat(g).st_size == 4  # attributes still cached ...
    assert g.read_bytes() == b"bbbbbbbb"  # ... but open(2) went to the server
