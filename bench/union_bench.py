"""Union filesystem benchmark: stackfs against fuse-overlayfs, unionfs-fuse and the kernel's
overlayfs, all mounted in one run over the same prepared tree (one upper, two lowers).

    /opt/stackfs-venv/bin/python bench/union_bench.py [--quick] [--only stackfs,fuse-overlayfs]
                                                      [--json FILE] [--reps N]
                                                      [--sessions cold,create,copyup-small]

Every measure is a time (lower is better); the table shows each peer's median and its ratio to
fuse-overlayfs measured in the same run, and the stackfs verdict against the targets of issue 3.
Measurements are plain syscalls from this process (``os.stat``, ``os.listdir``, ``os.open``,
``os.readv``, ...) timed with :func:`time.perf_counter_ns`, with the garbage collector off.

How the runs are laid out (see bench/README.md for the reasoning):

- Repetitions are interleaved: for each repetition every peer runs every session once, and the
  peer order rotates, so that the noise of a shared 2-core machine falls on all peers alike.
- Each *session* is one mount over a fresh upper and work directory (destructive measures never
  share an upper): ``cold`` (a new mount, caches dropped before each measure), ``warm``
  (warm-up pass, then timed passes), ``create``, ``write``, ``copyup-big``, ``copyup-small``.
- "Cold" is a fresh mount (so the daemon's own caches are empty too) and
  ``sync; echo 3 > /proc/sys/vm/drop_caches`` right before the measure.
- Every mount goes down in a ``finally`` (also on Ctrl-C and SIGTERM); a session that runs past
  ``--timeout`` has its FUSE connection aborted through /sys/fs/fuse/connections.

``--count-requests`` times nothing: it mounts each FUSE peer with ``-d`` and counts the FUSE
requests (libfuse's debug lines) that each operation costs, per file, per MiB or per listing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a checkout without the editable install

from stackfs.runtime import control, fusectl, lifecycle, mountinfo

MiB = 1 << 20
BLOCK = 1 * MiB  # read/write size of the sequential measures
REFERENCE = "fuse-overlayfs"


# --------------------------------------------------------------------------- sizes and measures


@dataclass(frozen=True)
class Sizes:
    """How big each measure is; ``reps`` outer repetitions, ``inner`` timed passes per session."""

    stat_files: int = 10_000
    readdir_entries: int = 10_000
    merged_entries: int = 10_000
    create_files: int = 2_000
    open_files: int = 1_000
    open_samples: int = 10_000
    seq_bytes: int = 256 * MiB
    small_files: int = 1_000
    small_size: int = 4096
    reps: int = 5
    inner: int = 3


FULL = Sizes()
QUICK = Sizes(
    stat_files=1_000,
    readdir_entries=1_000,
    merged_entries=1_000,
    create_files=200,
    open_files=200,
    open_samples=2_000,
    seq_bytes=32 * MiB,
    small_files=100,
    reps=3,
    inner=2,
)


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    target: float  # the highest stackfs/fuse-overlayfs ratio that passes (issue 15)
    unit: str = "ms"
    #: operations in one sample (FUSE requests are reported per operation; MiB for I/O)
    per: int = 1


def measures(sz: Sizes) -> list[Measure]:
    big = f"{sz.seq_bytes // MiB} MiB"
    return [
        Measure("stat_cold", f"stat {sz.stat_files} files, cold", 2.0, per=sz.stat_files),
        Measure("stat_warm", f"stat {sz.stat_files} files, warm", 1.1, per=sz.stat_files),
        Measure("readdir_cold", f"readdir {sz.readdir_entries} entries, cold", 1.0),
        Measure("readdir_warm", f"readdir {sz.readdir_entries} entries, warm", 1.0),
        Measure("readdir_merged", f"readdir merged {sz.merged_entries} (3 branches), cold", 1.0),
        Measure("readdir_merged_warm", f"readdir merged {sz.merged_entries}, warm", 1.0),
        Measure("create", f"create {sz.create_files} x 4 KiB", 2.0, per=sz.create_files),
        Measure("unlink", f"unlink {sz.create_files}", 1.5, per=sz.create_files),
        Measure("open_close_p50", "open+close p50", 2.0, "us", per=sz.open_samples),
        Measure("open_close_p99", "open+close p99", 2.0, "us", per=sz.open_samples),
        Measure("read_hot_lower", f"seq read {big}, hot lower", 1.5, per=sz.seq_bytes // MiB),
        Measure("read_reread", f"seq re-read {big}", 1.1, per=sz.seq_bytes // MiB),
        Measure("read_cold", f"seq read {big}, cold", 1.1, per=sz.seq_bytes // MiB),
        Measure("write_seq", f"seq write {big}", 1.0, per=sz.seq_bytes // MiB),
        Measure("copyup_big", f"copy-up 1 file of {big}", 1.1),
        Measure("copyup_small", f"copy-up {sz.small_files} small files", 2.0, per=sz.small_files),
    ]


class Recorder:
    """Samples (nanoseconds) per peer and measure, and what looked wrong."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[int]]] = {}
        self.problems: dict[str, list[str]] = {}
        self.aborted_from_outside = 0
        #: stackfs: FUSE requests per measure (the daemon's counters), and samples counted
        self.requests: dict[str, Counter[str]] = {}
        self.counted: dict[str, int] = {}

    def add(self, peer: str, key: str, ns: int) -> None:
        self.samples.setdefault(peer, {}).setdefault(key, []).append(int(ns))

    def problem(self, peer: str, text: str) -> None:
        lst = self.problems.setdefault(peer, [])
        if text not in lst:
            lst.append(text)
        print(f"  !! {peer}: {text}", file=sys.stderr, flush=True)

    def quartiles(self, peer: str, key: str) -> list[float] | None:
        """25th and 75th percentile of the samples (how noisy the median is)."""
        s = self.samples.get(peer, {}).get(key)
        if not s or len(s) < 2:
            return None
        q = statistics.quantiles(s, n=4, method="inclusive")
        return [q[0], q[2]]

    def median(self, peer: str, key: str) -> float | None:
        s = self.samples.get(peer, {}).get(key)
        return float(statistics.median(s)) if s else None


# --------------------------------------------------------------------------- the prepared tree


@dataclass
class Tree:
    """The shared lower branches and the template of every fresh upper.

    lower2 (bottom): ``stat/`` (stat targets), ``flat/`` (readdir), ``merged/`` names
    [0, 0.6N), ``data/big.bin`` (sequential reads and the big copy-up).
    lower1: ``merged/`` names [0.4N, 0.95N), ``open/`` (open+close), ``small/`` (small copy-up).
    upper template: ``merged/`` names [0.9N, N). Through the union ``merged/`` has N names,
    of which 0.25N exist in two branches.
    """

    root: Path
    lower1: Path
    lower2: Path
    template: Path
    stat_names: list[str]
    open_names: list[str]
    small_names: list[str]
    create_names: list[str]


def _fill(d: Path, names: list[str], data: bytes) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
            try:
                if data:
                    os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        os.close(dfd)


def prepare_tree(root: Path, sz: Sizes) -> Tree:
    l1, l2, tmpl = root / "lower1", root / "lower2", root / "upper-template"
    stat_names = [f"f{i:05d}" for i in range(sz.stat_files)]
    _fill(l2 / "stat", stat_names, b"s" * 64)
    _fill(l2 / "flat", [f"e{i:05d}" for i in range(sz.readdir_entries)], b"")
    n = sz.merged_entries
    _fill(l2 / "merged", [f"m{i:05d}" for i in range(0, n * 6 // 10)], b"2")
    _fill(l1 / "merged", [f"m{i:05d}" for i in range(n * 4 // 10, n * 95 // 100)], b"1")
    _fill(tmpl / "merged", [f"m{i:05d}" for i in range(n * 9 // 10, n)], b"u")
    open_names = [f"o{i:04d}" for i in range(sz.open_files)]
    _fill(l1 / "open", open_names, b"o" * 512)
    small_names = [f"s{i:04d}" for i in range(sz.small_files)]
    _fill(l1 / "small", small_names, os.urandom(sz.small_size))
    (l2 / "data").mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(BLOCK)  # not sparse: a copy-up has to move every byte
    with open(l2 / "data" / "big.bin", "wb") as f:
        for _ in range(sz.seq_bytes // BLOCK):
            f.write(chunk)
    os.sync()
    return Tree(
        root,
        l1,
        l2,
        tmpl,
        stat_names,
        open_names,
        small_names,
        [f"c{i:05d}" for i in range(sz.create_files)],
    )


# --------------------------------------------------------------------------- peers and mounts


@dataclass
class Branches:
    lower1: Path
    lower2: Path
    upper: Path
    work: Path


@dataclass
class Live:
    """A mount made by this benchmark."""

    peer: str
    mountpoint: Path
    conn: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stackfs: lifecycle.Mount | None = None
    log: Path | None = None


LIVE: list[Live] = []


class PeerError(Exception):
    pass


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _tail(path: Path | None, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return " | ".join(text.strip().splitlines()[-lines:])


class Peer:
    """One union filesystem: how to tell whether it is there, mount it, name its version."""

    name = ""
    fuse = True
    debug = False  # mount with -d: the daemon logs every FUSE request (--count-requests)

    def missing(self) -> str | None:
        raise NotImplementedError

    def version(self) -> str:
        return "?"

    def mount(self, b: Branches, mp: Path, log: Path) -> Live:
        raise NotImplementedError


class _ForegroundFusePeer(Peer):
    """A FUSE daemon run in the foreground as our child; live once mountinfo shows it."""

    binary = ""

    def argv(self, b: Branches, mp: Path) -> list[str]:
        raise NotImplementedError

    def missing(self) -> str | None:
        return None if shutil.which(self.binary) else f"{self.binary} is not installed"

    def mount(self, b: Branches, mp: Path, log: Path) -> Live:
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                self.argv(b, mp),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,  # Ctrl-C reaches us, not the daemon: we unmount first
            )
        live = Live(self.name, mp, proc=proc, log=log)
        LIVE.append(live)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            e = mountinfo.find(mp)
            if e is not None and e.is_fuse:
                live.conn = e.conn
                return live
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        unmount(live)
        raise PeerError(f"{self.name} did not mount: {_tail(log)}")


class FuseOverlayfs(_ForegroundFusePeer):
    name = "fuse-overlayfs"
    binary = "fuse-overlayfs"

    def argv(self, b: Branches, mp: Path) -> list[str]:
        opts = f"lowerdir={b.lower1}:{b.lower2},upperdir={b.upper},workdir={b.work}"
        return [self.binary, "-d" if self.debug else "-f", "-o", opts, str(mp)]

    def version(self) -> str:
        out = _run([self.binary, "--version"]).stdout
        return next((ln.split()[-1] for ln in out.splitlines() if "fuse-overlayfs" in ln), "?")


class UnionfsFuse(_ForegroundFusePeer):
    name = "unionfs-fuse"
    binary = "unionfs"

    def argv(self, b: Branches, mp: Path) -> list[str]:
        dirs = f"{b.upper}=RW:{b.lower1}=RO:{b.lower2}=RO"
        fg = "-d" if self.debug else "-f"
        return [self.binary, fg, "-o", "cow,allow_other", dirs, str(mp)]

    def version(self) -> str:
        p = _run([self.binary, "--version"])
        out = p.stdout + p.stderr
        return next((ln.split()[-1] for ln in out.splitlines() if "unionfs" in ln), "?")


class PyFloor(_ForegroundFusePeer):
    """A bare pyfuse3 passthrough over the same branches with stackfs' kernel fast paths
    (``bench/pyfuse3_floor.py``): the least any pyfuse3 filesystem pays per request here."""

    name = "pyfuse3-floor"
    binary = sys.executable

    def argv(self, b: Branches, mp: Path) -> list[str]:
        floor = str(REPO / "bench" / "pyfuse3_floor.py")
        return [sys.executable, floor, str(b.upper), str(b.lower1), str(b.lower2), str(mp)]

    def missing(self) -> str | None:
        p = _run([sys.executable, "-c", "import pyfuse3; pyfuse3.FileInfo(cache_readdir=1)"])
        return None if p.returncode == 0 else "pyfuse3 without the stackfs patch (provision.sh)"

    def version(self) -> str:
        p = _run([sys.executable, "-c", "import pyfuse3; print(pyfuse3.__version__)"])
        return f"pyfuse3 {p.stdout.strip() or '?'}"


class KernelOverlayfs(Peer):
    name = "overlayfs"
    fuse = False

    def missing(self) -> str | None:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1] == "overlay" for line in f if line.strip()):
                return None
        _run(["modprobe", "overlay"])
        with open("/proc/filesystems") as f:
            if any(line.split()[-1] == "overlay" for line in f if line.strip()):
                return None
        return "the kernel has no overlay filesystem"

    def version(self) -> str:
        return f"Linux {platform.release()}"

    def mount(self, b: Branches, mp: Path, log: Path) -> Live:
        opts = f"lowerdir={b.lower1}:{b.lower2},upperdir={b.upper},workdir={b.work}"
        p = _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mp)])
        if p.returncode != 0:
            raise PeerError(f"mount -t overlay failed: {p.stderr.strip()}")
        live = Live(self.name, mp)
        LIVE.append(live)
        return live


class Stackfs(Peer):
    name = "stackfs"

    def __init__(self, extra_opts: list[str]) -> None:
        self.extra_opts = extra_opts

    def missing(self) -> str | None:
        p = _run(lifecycle.stackfs_argv("mount", "--help"))
        if p.returncode != 0:
            return (
                "`stackfs mount` is not available yet: "
                + (p.stderr.strip().splitlines() or ["?"])[-1]
            )
        return None

    def version(self) -> str:
        p = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        rev = p.stdout.strip() or "?"
        dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "stackfs"]).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}"

    def mount(self, b: Branches, mp: Path, log: Path) -> Live:
        opts = ",".join(
            [f"lowerdir={b.lower1}:{b.lower2}", f"upperdir={b.upper}", f"workdir={b.work}"]
            + self.extra_opts
        )
        env = dict(os.environ)
        env.setdefault("STACKFS_RUN_ID", f"union-bench-{os.getpid()}")
        try:
            m = lifecycle.start_daemon(
                lifecycle.stackfs_argv(
                    "mount", "-f", *(["-d"] if self.debug else []), "-o", opts, str(mp)
                ),
                mp,
                env=env,
                log=log,
            )
        except lifecycle.MountError as exc:
            raise PeerError(str(exc).replace("\n", " | ")) from exc
        live = Live(self.name, mp, conn=m.conn, stackfs=m, log=log)
        LIVE.append(live)
        return live


def _umount(mp: Path, *flags: str) -> bool:
    try:
        return _run(["umount", "--no-canonicalize", *flags, str(mp)], timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def unmount(live: Live) -> None:
    """Take a mount of ours down whatever state it is in (clean umount, else abort + detach)."""
    with contextlib.suppress(ValueError):
        LIVE.remove(live)
    if live.stackfs is not None:
        lifecycle.unmount(live.stackfs)
        return
    e = mountinfo.find(live.mountpoint)
    ours = e is not None and (e.conn == live.conn if live.conn else e.fstype == "overlay")
    if ours and not _umount(live.mountpoint):
        if live.conn:
            fusectl.abort(live.conn)
        _umount(live.mountpoint, "-l")
    if live.proc is not None:
        try:
            live.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            live.proc.terminate()
            try:
                live.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                live.proc.kill()
                live.proc.wait(timeout=3)


def unmount_all() -> None:
    while LIVE:
        try:
            unmount(LIVE[-1])
        except Exception as exc:  # keep going: every other mount must still go down
            print(f"  !! unmounting {LIVE[-1].mountpoint}: {exc}", file=sys.stderr)
            with contextlib.suppress(IndexError):
                LIVE.pop()


# --------------------------------------------------------------------------- syscall-level timing


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: page cache, dentries and inodes (and so
    FUSE FORGETs) of every filesystem."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def dirfd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


class Check(Exception):
    """What the union showed was wrong (a count, a size): the sample is not recorded."""


def t_stat(d: Path, names: list[str]) -> int:
    with dirfd(d) as dfd, no_gc():
        t0 = time.perf_counter_ns()
        for n in names:
            os.stat(n, dir_fd=dfd)
        return time.perf_counter_ns() - t0


def t_readdir(d: Path, expect: int) -> int:
    with no_gc():
        t0 = time.perf_counter_ns()
        names = os.listdir(d)
        ns = time.perf_counter_ns() - t0
    if len(names) != expect:
        raise Check(f"readdir of {d.name}/ listed {len(names)} names, expected {expect}")
    return ns


def open_close_latencies(d: Path, names: list[str], samples: int) -> list[int]:
    out = [0] * samples
    k = len(names)
    clock = time.perf_counter_ns
    with dirfd(d) as dfd, no_gc():
        for i in range(samples):
            n = names[i % k]
            t0 = clock()
            fd = os.open(n, os.O_RDONLY, dir_fd=dfd)
            os.close(fd)
            out[i] = clock() - t0
    return out


def percentile(sorted_values: list[int], q: float) -> int:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def read_all(path: Path, buf: bytearray) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                return total
            total += n
    finally:
        os.close(fd)


def t_read(path: Path, size: int, buf: bytearray) -> int:
    with no_gc():
        t0 = time.perf_counter_ns()
        got = read_all(path, buf)
        ns = time.perf_counter_ns() - t0
    if got != size:
        raise Check(f"read {got} bytes of {path.name}, expected {size}")
    return ns


def drop_file_cache(path: Path) -> None:
    """Drop the page cache of one file (for a FUSE file: the union's own copy only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def t_create_unlink(d: Path, names: list[str]) -> int:
    return t_create(d, names, b"") + t_unlink(d, names)


def t_create(d: Path, names: list[str], data: bytes) -> int:
    """``open(O_CREAT|O_EXCL)``, one write of ``data`` (if any), ``close`` of each new name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with dirfd(d) as dfd, no_gc():
        t0 = time.perf_counter_ns()
        for n in names:
            fd = os.open(n, flags, 0o644, dir_fd=dfd)
            try:
                if data:
                    os.write(fd, data)
            finally:
                os.close(fd)
        return time.perf_counter_ns() - t0


def t_unlink(d: Path, names: list[str]) -> int:
    with dirfd(d) as dfd, no_gc():
        t0 = time.perf_counter_ns()
        for n in names:
            os.unlink(n, dir_fd=dfd)
        ns = time.perf_counter_ns() - t0
    if os.listdir(d):
        raise Check(f"{d.name}/ is not empty after unlink")
    return ns


def t_write(path: Path, size: int, buf: bytes) -> int:
    with no_gc():
        t0 = time.perf_counter_ns()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left:
                left -= os.write(fd, buf[: min(left, len(buf))])
        finally:
            os.close(fd)
        ns = time.perf_counter_ns() - t0
    if os.stat(path).st_size != size:
        raise Check(f"wrote {size} bytes but {path.name} has {os.stat(path).st_size}")
    return ns


def t_copyup(d: Path, names: list[str]) -> int:
    """Open each lower file for writing (that is the copy-up), write one byte, close."""
    with dirfd(d) as dfd, no_gc():
        t0 = time.perf_counter_ns()
        for n in names:
            fd = os.open(n, os.O_WRONLY | os.O_APPEND, dir_fd=dfd)
            try:
                os.write(fd, b"+")
            finally:
                os.close(fd)
        return time.perf_counter_ns() - t0


# --------------------------------------------------------------------------- sessions


@dataclass
class Ctx:
    tree: Tree
    sz: Sizes
    rec: Recorder
    peer: Peer
    mp: Path
    branches: Branches
    buf: bytearray = field(default_factory=lambda: bytearray(BLOCK))
    samples: dict[str, list[int]] = field(default_factory=dict)

    def add(self, key: str, ns: int) -> None:
        """Keep a sample of this session (committed when the session was not aborted)."""
        self.samples.setdefault(key, []).append(int(ns))

    def measure(self, key: str, fn: Callable[[], int]) -> None:
        try:
            with self.counting(key):
                self.add(key, fn())
        except Check as exc:
            self.rec.problem(self.peer.name, f"{key}: {exc}")

    @contextlib.contextmanager
    def counting(self, key: str) -> Iterator[None]:
        """stackfs: count the FUSE requests the kernel sends while the body runs (the daemon's
        per-opcode counters, ``stackfs state``; read outside the timed part)."""
        if self.peer.name != "stackfs":
            yield
            return
        before = _requests(self.mp)
        yield
        after = _requests(self.mp)
        if before is not None and after is not None:
            self.rec.requests.setdefault(key, Counter()).update(after - before)
            self.rec.counted[key] = self.rec.counted.get(key, 0) + 1


def _requests(mp: Path) -> Counter[str] | None:
    try:
        return Counter(control.query(mp, {"op": "state"}, timeout=10)["requests"])
    except (OSError, KeyError, ValueError):
        return None


def s_cold(c: Ctx) -> None:
    """A fresh mount; caches dropped before each measure."""
    mp, sz = c.mp, c.sz
    drop_caches()
    c.measure("stat_cold", lambda: t_stat(mp / "stat", c.tree.stat_names))
    drop_caches()
    c.measure("readdir_cold", lambda: t_readdir(mp / "flat", sz.readdir_entries))
    drop_caches()
    c.measure("readdir_merged", lambda: t_readdir(mp / "merged", sz.merged_entries))
    drop_caches()
    c.measure("read_cold", lambda: t_read(mp / "data" / "big.bin", sz.seq_bytes, c.buf))


def s_warm(c: Ctx) -> None:
    """One warm-up pass, then ``inner`` timed passes of each cached measure."""
    mp, sz = c.mp, c.sz
    for key, fn in (
        ("stat_warm", lambda: t_stat(mp / "stat", c.tree.stat_names)),
        ("readdir_warm", lambda: t_readdir(mp / "flat", sz.readdir_entries)),
        ("readdir_merged_warm", lambda: t_readdir(mp / "merged", sz.merged_entries)),
    ):
        with contextlib.suppress(Check):
            fn()  # the warm-up pass
        for _ in range(sz.inner):
            c.measure(key, fn)
    opendir = mp / "open"
    open_close_latencies(opendir, c.tree.open_names, len(c.tree.open_names))
    for _ in range(sz.inner):
        with c.counting("open_close_p50"):
            lat = sorted(open_close_latencies(opendir, c.tree.open_names, sz.open_samples))
        c.add("open_close_p50", percentile(lat, 0.50))
        c.add("open_close_p99", percentile(lat, 0.99))
    big, lower_big = mp / "data" / "big.bin", c.tree.lower2 / "data" / "big.bin"
    for _ in range(sz.inner):
        drop_file_cache(big)  # the union's copy (overlayfs: the lower's, read again below)
        read_all(lower_big, c.buf)  # lower pages hot
        c.measure("read_hot_lower", lambda: t_read(big, sz.seq_bytes, c.buf))
        c.measure("read_reread", lambda: t_read(big, sz.seq_bytes, c.buf))


def s_create(c: Ctx) -> None:
    """create (4 KiB each), then unlink, in a directory made through the union; one untimed
    warm-up round."""
    data = os.urandom(4096)
    names = c.tree.create_names
    for i in range(-1, c.sz.inner):
        d = c.mp / f"create{i + 1}"
        os.mkdir(d)
        if i < 0:
            t_create(d, names, data)
            t_unlink(d, names)
        else:
            c.measure("create", lambda d=d: t_create(d, names, data))
            c.measure("unlink", lambda d=d: t_unlink(d, names))
        os.rmdir(d)


def s_write(c: Ctx) -> None:
    """Sequential 1 MiB writes of a new file and close (no fsync); sync between passes."""
    buf = bytes(os.urandom(BLOCK))
    for i in range(c.sz.inner):
        path = c.mp / f"write{i}.bin"
        os.sync()
        c.measure("write_seq", lambda p=path: t_write(p, c.sz.seq_bytes, buf))
        os.unlink(path)
    os.sync()


def s_copyup_big(c: Ctx) -> None:
    """Copy-up of the big lower file by an open for writing; the lower pages are hot."""
    read_all(c.tree.lower2 / "data" / "big.bin", c.buf)
    os.stat(c.mp / "data" / "big.bin")
    os.sync()
    c.measure("copyup_big", lambda: t_copyup(c.mp / "data", ["big.bin"]))
    up = c.branches.upper / "data" / "big.bin"
    try:
        size = up.stat().st_size
    except OSError:
        size = -1
    if size != c.sz.seq_bytes + 1:
        c.rec.problem(c.peer.name, f"copyup_big: upper copy has {size} bytes")
    os.sync()


def s_copyup_small(c: Ctx) -> None:
    """Copy-up of every small lower file (lookups warm, lower pages hot)."""
    small = c.tree.lower1 / "small"
    for n in c.tree.small_names:
        read_all(small / n, c.buf)
        os.stat(c.mp / "small" / n)
    os.sync()
    c.measure("copyup_small", lambda: t_copyup(c.mp / "small", c.tree.small_names))
    got = len(os.listdir(c.branches.upper / "small"))
    if got != c.sz.small_files:
        c.rec.problem(c.peer.name, f"copyup_small: {got} files in the upper branch")
    os.sync()


#: name, function, whether the fresh upper gets the template (the merged directory's top part)
SESSIONS: list[tuple[str, Callable[[Ctx], None], bool]] = [
    ("cold", s_cold, True),
    ("warm", s_warm, True),
    ("create", s_create, False),
    ("write", s_write, False),
    ("copyup-big", s_copyup_big, False),
    ("copyup-small", s_copyup_small, False),
]


def _suspects() -> str:
    """Processes that may abort FUSE connections (other test runs), for the problem report."""
    rows = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "pytest" in cmd or "stackfs" in cmd:
            rows.append(f"{pid}: {cmd.strip()[:100]}")
    return "; ".join(rows[:6]) or "none seen"


ABORTED = (errno.ECONNABORTED, errno.ENOTCONN)


def run_session(
    peer: Peer,
    name: str,
    fn: Callable[[Ctx], None],
    template: bool,
    tree: Tree,
    sz: Sizes,
    rec: Recorder,
    scratch: Path,
    timeout: float,
    attempts: int = 3,
) -> None:
    """Mount ``peer`` over a fresh upper, run one session, unmount whatever happened.

    Samples are kept only from a session that was not aborted from outside: a FUSE connection
    aborted by someone else (ECONNABORTED/ENOTCONN while our watchdog did not fire) makes the
    session start again on a fresh mount, up to ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        base = Path(tempfile.mkdtemp(prefix=f"{peer.name}-{name}-", dir=scratch))
        upper, work, mp = base / "upper", base / "work", scratch / "mnt"
        if template:
            shutil.copytree(tree.template, upper, symlinks=True)
        else:
            upper.mkdir()
        work.mkdir()
        mp.mkdir(exist_ok=True)
        b = Branches(tree.lower1, tree.lower2, upper, work)
        live: Live | None = None
        timer: threading.Timer | None = None
        fired = threading.Event()
        ctx = Ctx(tree, sz, rec, peer, mp, b)
        retry = False
        try:
            live = peer.mount(b, mp, scratch / f"{peer.name}.log")

            def overrun(conn: int = live.conn, fired: threading.Event = fired) -> None:
                fired.set()
                rec.problem(peer.name, f"session {name} ran past {timeout:.0f} s: aborted")
                if conn:
                    fusectl.abort(conn)

            timer = threading.Timer(timeout, overrun)
            timer.daemon = True
            timer.start()
            fn(ctx)
        except OSError as exc:
            if exc.errno in ABORTED and not fired.is_set() and attempt < attempts:
                retry = True
                print(
                    f"  !! {peer.name}: session {name}: {exc.strerror}: the connection was "
                    f"aborted from outside (attempt {attempt}); running the session again. "
                    f"Other runs: {_suspects()}",
                    file=sys.stderr,
                    flush=True,
                )
                rec.aborted_from_outside += 1
            else:
                rec.problem(peer.name, f"session {name}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # one broken session must not end the run (Ctrl-C still does)
            rec.problem(peer.name, f"session {name}: {type(exc).__name__}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            if live is not None:
                unmount(live)
            shutil.rmtree(base, ignore_errors=True)
        if not retry:
            for key, values in ctx.samples.items():
                for v in values:
                    rec.add(peer.name, key, v)
            return


# --------------------------------------------------------------------------- FUSE requests per op

#: opcodes libfuse 3.14 prints as ``???``
OPCODES = {51: "SETUPMAPPING", 52: "STATX", 53: "COPY_FILE_RANGE_64"}


class RequestLog:
    """The FUSE requests a daemon started with ``-d`` logged (libfuse's ``unique: N, opcode:
    NAME (NUM)`` lines), counted between two marks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        time.sleep(0.3)  # let asynchronous requests (FORGET, RELEASE) land before the mark
        self.offset = self.path.stat().st_size

    def since_mark(self) -> dict[str, int]:
        time.sleep(0.3)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        counts: dict[str, int] = {}
        for m in re.finditer(r"opcode: (\S+) \((\d+)\)", text):
            name = m.group(1) if m.group(1) != "???" else OPCODES.get(int(m.group(2)), m.group(2))
            counts[name] = counts.get(name, 0) + 1
        return counts


def count_requests(peers: list[Peer], tree: Tree, sz: Sizes, scratch: Path) -> str:
    """Mount each FUSE peer with ``-d`` and count its FUSE requests per operation."""
    big, lower_big = Path("data") / "big.bin", tree.lower2 / "data" / "big.bin"
    mib = sz.seq_bytes // MiB
    buf = bytearray(BLOCK)
    wbuf = bytes(BLOCK)

    def copyup_small(mp: Path) -> None:
        for n in tree.small_names:
            os.stat(mp / "small" / n)

    # label, per how many, whether caches are dropped first, set-up (not counted), the operation
    scenarios: list[tuple[str, int, bool, Callable[[Path], object], Callable[[Path], object]]] = [
        (
            "stat, cold (per file)",
            sz.stat_files,
            True,
            lambda mp: None,
            lambda mp: t_stat(mp / "stat", tree.stat_names),
        ),
        (
            "stat, warm (per file)",
            sz.stat_files,
            False,
            lambda mp: None,
            lambda mp: t_stat(mp / "stat", tree.stat_names),
        ),
        (
            f"readdir {sz.readdir_entries}, cold",
            1,
            True,
            lambda mp: None,
            lambda mp: os.listdir(mp / "flat"),
        ),
        (
            f"readdir {sz.readdir_entries}, warm",
            1,
            False,
            lambda mp: None,
            lambda mp: os.listdir(mp / "flat"),
        ),
        (
            f"readdir merged {sz.merged_entries}, cold",
            1,
            True,
            lambda mp: None,
            lambda mp: os.listdir(mp / "merged"),
        ),
        (
            f"readdir merged {sz.merged_entries}, warm",
            1,
            False,
            lambda mp: None,
            lambda mp: os.listdir(mp / "merged"),
        ),
        (
            "open+close, warm (per open)",
            sz.open_files,
            False,
            lambda mp: open_close_latencies(mp / "open", tree.open_names, sz.open_files),
            lambda mp: open_close_latencies(mp / "open", tree.open_names, sz.open_files),
        ),
        (
            "create+unlink (per file)",
            sz.create_files,
            False,
            lambda mp: os.mkdir(mp / "cu"),
            lambda mp: t_create_unlink(mp / "cu", tree.create_names),
        ),
        (
            "seq read, hot lower (per MiB)",
            mib,
            False,
            lambda mp: (drop_file_cache(mp / big), read_all(lower_big, buf)),
            lambda mp: read_all(mp / big, buf),
        ),
        ("seq re-read (per MiB)", mib, False, lambda mp: None, lambda mp: read_all(mp / big, buf)),
        (
            "seq write (per MiB)",
            mib,
            False,
            lambda mp: None,
            lambda mp: t_write(mp / "w.bin", sz.seq_bytes, wbuf),
        ),
        (
            "copy-up small (per file)",
            sz.small_files,
            False,
            copyup_small,
            lambda mp: t_copyup(mp / "small", tree.small_names),
        ),
        (
            "copy-up big (the file)",
            1,
            False,
            lambda mp: os.stat(mp / big),
            lambda mp: t_copyup(mp / "data", ["big.bin"]),
        ),
    ]
    results: dict[str, dict[str, dict[str, int]]] = {}
    for peer in peers:
        if not peer.fuse:
            continue
        peer.debug = True
        base = Path(tempfile.mkdtemp(prefix=f"count-{peer.name}-", dir=scratch))
        (base / "upper").mkdir()
        shutil.copytree(tree.template / "merged", base / "upper" / "merged")
        (base / "work").mkdir()
        mp = scratch / "mnt"
        mp.mkdir(exist_ok=True)
        log = scratch / f"count-{peer.name}.log"
        live = None
        try:
            live = peer.mount(
                Branches(tree.lower1, tree.lower2, base / "upper", base / "work"), mp, log
            )
            rl = RequestLog(log)
            for label, _per, cold, setup, op in scenarios:
                setup(mp)
                if cold:
                    drop_caches()
                rl.mark()
                op(mp)
                results.setdefault(label, {})[peer.name] = rl.since_mark()
        except Exception as exc:
            print(
                f"  !! {peer.name}: counting requests: {type(exc).__name__}: {exc}", file=sys.stderr
            )
        finally:
            peer.debug = False
            if live is not None:
                unmount(live)
            shutil.rmtree(base, ignore_errors=True)
    names = [p.name for p in peers if p.fuse]
    lines = [
        f"FUSE requests per operation (daemons run with -d; {sz.stat_files} files, {mib} MiB)",
        "",
    ]
    for label, per, *_ in scenarios:
        lines.append(label)
        for n in names:
            c = results.get(label, {}).get(n)
            if c is None:
                lines.append(f"    {n:<15} -")
                continue
            total = sum(c.values()) / per
            top = sorted(c.items(), key=lambda kv: -kv[1])
            detail = ", ".join(f"{k} {v / per:.2f}" for k, v in top if v / per >= 0.005)
            lines.append(f"    {n:<15} {total:8.2f}   {detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def fmt_time(ns: float | None, unit: str) -> str:
    if ns is None:
        return "-"
    v = ns / (1e3 if unit == "us" else 1e6)
    return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}" if v >= 10 else f"{v:.2f} {unit}"


def ratios(rec: Recorder, ms: list[Measure], peers: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in peers:
        for m in ms:
            ref, val = rec.median(REFERENCE, m.key), rec.median(p, m.key)
            if ref and val is not None:
                out.setdefault(p, {})[m.key] = val / ref
    return out


def verdicts(rat: dict[str, dict[str, float]], ms: list[Measure]) -> dict[str, str]:
    s = rat.get("stackfs", {})
    return {m.key: ("PASS" if s[m.key] <= m.target else "MISS") if m.key in s else "-" for m in ms}


def table(rec: Recorder, ms: list[Measure], peers: list[str]) -> str:
    rat = ratios(rec, ms, peers)
    ver = verdicts(rat, ms)
    order = [
        p
        for p in (REFERENCE, "stackfs", "pyfuse3-floor", "overlayfs", "unionfs-fuse")
        if p in peers
    ]
    lw = max(len(m.label) for m in ms) + 2
    head1 = f"{'measure':<{lw}}"
    head2 = " " * lw
    for p in order:
        w = 14 if p == REFERENCE else 17
        head1 += f"{p:>{w}} "
        head2 += f"{'median':>14} " if p == REFERENCE else f"{'median':>10}{'ratio':>7} "
    head1 += f"{'target':>8} {'stackfs':>8}"
    head2 += f"{'(ratio)':>8} {'verdict':>8}"
    lines = [head1, head2, "-" * len(head1)]
    for m in ms:
        if all(rec.median(p, m.key) is None for p in order):
            continue  # not measured in this run (--sessions)
        row = f"{m.label:<{lw}}"
        for p in order:
            med = fmt_time(rec.median(p, m.key), m.unit)
            if p == REFERENCE:
                row += f"{med:>14} "
            else:
                r = rat.get(p, {}).get(m.key)
                row += f"{med:>10}{(f'{r:.2f}' if r is not None else '-'):>7} "
        row += f"{'<= ' + format(m.target, '.1f'):>8} {ver[m.key]:>8}"
        lines.append(row)
    return "\n".join(lines)


def request_table(rec: Recorder, ms: list[Measure]) -> str:
    """FUSE requests per operation of stackfs, from its daemon's counters (FORGETs included:
    they come when the kernel reclaims inodes, not always during the operation)."""
    lines = ["stackfs: FUSE requests per operation (the daemon's counters, `stackfs state`)"]
    lw = max(len(m.label) for m in ms) + 2
    for m in ms:
        got = rec.requests.get(m.key)
        if got is None or not rec.counted.get(m.key):
            continue
        ops = rec.counted[m.key] * m.per
        per = {k: n / ops for k, n in got.most_common()}
        unit = "per MiB" if m.key.startswith(("read_", "write_")) else "per op"
        detail = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v >= 0.005)
        lines.append(f"  {m.label:<{lw}}{sum(per.values()):6.2f} {unit:<8} {detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def ensure_peers(wanted: list[Peer], setup: bool) -> dict[str, str]:
    """Install missing peers with bench/setup-peers.sh; return peer -> why it is unavailable."""
    why = {p.name: r for p in wanted if (r := p.missing())}
    fuse_missing = [n for n in why if n in (REFERENCE, "unionfs-fuse")]
    if fuse_missing and setup:
        print(f"installing {', '.join(fuse_missing)} with bench/setup-peers.sh", flush=True)
        subprocess.run(["bash", str(REPO / "bench" / "setup-peers.sh")], check=False)
        why = {p.name: r for p in wanted if (r := p.missing())}
    return why


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated peers: stackfs,fuse-overlayfs,pyfuse3-floor,overlayfs,"
        "unionfs-fuse (default: all)",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=-1,
        help="pin the benchmark and every daemon it starts to this CPU (default: the last one; "
        "-1 = the last), so a FUSE round trip costs the same for every peer",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument(
        "--sessions",
        default="",
        help="comma-separated sessions to run: "
        + ",".join(n for n, _f, _t in SESSIONS)
        + " (default: all; a short run of the measures you are working on)",
    )
    ap.add_argument("--json", type=Path, help="write every sample and the summary here")
    ap.add_argument("--reps", type=int, help="outer repetitions (default 5, --quick 3)")
    ap.add_argument("--inner", type=int, help="timed passes per warm/create/write session")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch directory")
    ap.add_argument("--no-setup", action="store_true", help="never run bench/setup-peers.sh")
    ap.add_argument(
        "--count-requests",
        action="store_true",
        help="instead of timing: mount the FUSE peers with -d and count FUSE requests per "
        "operation (quick sizes)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per session, seconds")
    ap.add_argument(
        "--stackfs-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="extra -o option for stackfs mount (repeatable)",
    )
    return ap.parse_args(argv)


ALIASES = {
    "kernel": "overlayfs",
    "overlay": "overlayfs",
    "unionfs": "unionfs-fuse",
    "floor": "pyfuse3-floor",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("union_bench: run me as root (mounts, drop_caches)", file=sys.stderr)
        return 2
    sz = QUICK if args.quick or args.count_requests else FULL
    if args.reps or args.inner:
        sz = Sizes(**{**asdict(sz), "reps": args.reps or sz.reps, "inner": args.inner or sz.inner})
    every: list[Peer] = [
        FuseOverlayfs(),
        Stackfs(args.stackfs_opt),
        PyFloor(),
        KernelOverlayfs(),
        UnionfsFuse(),
    ]
    names = [ALIASES.get(n.strip(), n.strip()) for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {p.name for p in every}
    if unknown:
        print(f"union_bench: unknown peer(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    wanted = [p for p in every if not names or p.name in names]
    fusectl.ensure_mounted()
    why = ensure_peers(wanted, not args.no_setup)
    for n, r in why.items():
        print(f"skipping {n}: {r}", flush=True)
    peers = [p for p in wanted if p.name not in why]
    if not peers:
        print("union_bench: no peer can be mounted", file=sys.stderr)
        return 1
    if REFERENCE not in [p.name for p in peers]:
        print(f"note: {REFERENCE} is not in this run: no ratios", flush=True)
    sessions = [x.strip() for x in args.sessions.split(",") if x.strip()]
    unknown = set(sessions) - {n for n, _f, _t in SESSIONS}
    if unknown:
        print(f"union_bench: unknown session(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    run_sessions = [s for s in SESSIONS if not sessions or s[0] in sessions]
    ms = measures(sz)
    rec = Recorder()
    pinned = "not pinned"
    if not args.no_pin:
        cpu = args.cpu if args.cpu >= 0 else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # the daemons we start inherit it
        pinned = f"benchmark and daemons pinned to CPU {cpu}"
    old_term = signal.signal(signal.SIGTERM, _raise_exit)
    scratch = Path(tempfile.mkdtemp(prefix="union-bench-", dir=args.dir))
    t_start = time.monotonic()
    load_start = _loadavg()
    versions = {p.name: p.version() for p in peers}
    try:
        print(f"preparing the tree in {scratch} ...", flush=True)
        tree = prepare_tree(scratch / "tree", sz)
        if args.count_requests:
            print(count_requests(peers, tree, sz, scratch))
            return 0
        can_drop = drop_caches()
        if not can_drop:
            print("note: cannot write drop_caches: cold = fresh mount only", flush=True)
        for rep in range(sz.reps):
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
            for peer in order:
                t0 = time.monotonic()
                for name, fn, template in run_sessions:
                    run_session(peer, name, fn, template, tree, sz, rec, scratch, args.timeout)
                print(
                    f"  rep {rep + 1}/{sz.reps} {peer.name}: {time.monotonic() - t0:.1f} s",
                    flush=True,
                )
    finally:
        unmount_all()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(scratch, ignore_errors=True)
    names_run = [p.name for p in peers]
    print()
    print(
        f"union benchmark, {platform.node()}, Linux {platform.release()}, "
        f"{os.cpu_count()} cores; {time.monotonic() - t_start:.0f} s"
    )
    print("peers: " + ", ".join(f"{n} {versions[n]}" for n in names_run))
    print(
        f"load average at start {load_start}, at end {_loadavg()} (the machine is shared); {pinned}"
    )
    print(
        f"medians over {sz.reps} repetitions (cold, copy-up) or {sz.reps}x{sz.inner} passes "
        f"(warm, create, write; open+close: percentiles of {sz.open_samples} opens per pass); "
        f"ratio = peer / {REFERENCE}, lower is better"
    )
    print()
    print(table(rec, ms, names_run))
    if rec.requests:
        print()
        print(request_table(rec, ms))
    for p, probs in rec.problems.items():
        for t in probs:
            print(f"problem: {p}: {t}")
    if rec.aborted_from_outside:
        print(
            f"note: {rec.aborted_from_outside} session(s) had their FUSE connection aborted by "
            "another process and were run again"
        )
    if args.json:
        rat = ratios(rec, ms, names_run)
        doc: dict[str, Any] = {
            "argv": sys.argv,
            "sizes": asdict(sz),
            "peers": {n: {"version": versions[n]} for n in names_run},
            "skipped": why,
            "measures": [asdict(m) for m in ms],
            "samples_ns": rec.samples,
            "median_ns": {p: {m.key: rec.median(p, m.key) for m in ms} for p in names_run},
            "quartiles_ns": {p: {m.key: rec.quartiles(p, m.key) for m in ms} for p in names_run},
            "ratio": rat,
            "stackfs_verdict": verdicts(rat, ms),
            "problems": rec.problems,
            "loadavg": [load_start, _loadavg()],
            "aborted_from_outside": rec.aborted_from_outside,
            "stackfs_requests": {
                k: {"samples": rec.counted[k], "total": dict(v)} for k, v in rec.requests.items()
            },
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("union_bench: interrupted; every mount was taken down", file=sys.stderr)
        sys.exit(130)
