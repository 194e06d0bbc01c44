"""Concurrent directory operations on overlapping names (issue 21, item 4).

``procs`` real processes (forked) each run random ``mkdir``, ``rmdir``, ``rename``, ``stat``
and ``chmod`` on a handful of names in one directory (and one name below each), for a bounded
time and operation budget, and count every errno. Names collide on purpose: EEXIST, ENOENT,
ENOTEMPTY, ENOTDIR and EINVAL are what a POSIX filesystem answers to such a mix; ESTALE and EIO
are not (ext4, tmpfs and the kernel's overlayfs give none). Freed inode numbers are reused at
once on ext4, so a union over ext4 branches meets a number the kernel still holds under an old
object (:mod:`stackfs.union.inode`: node generations).

:func:`run` is what ``tests/union/test_union_stress.py`` (bounded) and
``bench/union_dirstress.py`` (long runs, against overlayfs and plain directories measured in the
same run) call.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

#: names in the stressed directory, and the one name made below each of them
NAMES = ("d0", "d1", "d2", "d3")
SUB = "s"
MODES = (0o755, 0o700, 0o750, 0o777)
OPS = ("mkdir", "rmdir", "rename", "stat", "chmod")
#: what a worker process sends back: its operations, and their outcomes counted
WorkerCounts = tuple[int, dict[tuple[str, str], int]]
#: what the mix may answer; anything else (ESTALE, EIO) is a bug of the filesystem under test
EXPECTED = frozenset({errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR, errno.EINVAL})


@dataclass
class Report:
    """Operation and errno counts of one run, summed over the processes."""

    ops: int = 0
    seconds: float = 0.0
    #: (operation, errno name or "ok") -> count
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def errors(self) -> Counter[str]:
        """errno name -> count, every operation together."""
        out: Counter[str] = Counter()
        for (_, what), n in self.counts.items():
            if what != "ok":
                out[what] += n
        return out

    def unexpected(self) -> dict[str, int]:
        """``"op: ERRNO"`` -> count for the errnos outside :data:`EXPECTED`."""
        expected = {errno.errorcode[e] for e in EXPECTED} | {"ok"}
        return {f"{op}: {what}": n for (op, what), n in self.counts.items() if what not in expected}


def _paths(base: str, rng: random.Random) -> str:
    name = os.path.join(base, rng.choice(NAMES))
    return os.path.join(name, SUB) if rng.random() < 0.25 else name


def _one(base: str, op: str, rng: random.Random) -> None:
    path = _paths(base, rng)
    if op == "mkdir":
        os.mkdir(path, 0o755)
    elif op == "rmdir":
        os.rmdir(path)
    elif op == "rename":
        # within the stressed directory: over an empty or non-empty directory, or a free name
        os.rename(os.path.join(base, rng.choice(NAMES)), os.path.join(base, rng.choice(NAMES)))
    elif op == "stat":
        os.stat(path)
    else:
        os.chmod(path, rng.choice(MODES))


def _worker(
    base: str, seed: int, deadline: float, budget: int, out: multiprocessing.Queue[WorkerCounts]
) -> None:
    rng = random.Random(seed)
    counts: Counter[tuple[str, str]] = Counter()
    n = 0
    while n < budget and time.monotonic() < deadline:
        op = rng.choice(OPS)
        try:
            _one(base, op, rng)
            counts[(op, "ok")] += 1
        except OSError as exc:
            counts[(op, errno.errorcode.get(exc.errno or 0, str(exc.errno)))] += 1
        n += 1
    out.put((n, dict(counts)))


def run(
    base: str, *, procs: int = 8, seconds: float = 15.0, ops: int = 10**9, seed: int = 21
) -> Report:
    """Stress directory ``base`` (created if missing) with ``procs`` processes for at most
    ``seconds`` and ``ops`` operations in all; returns the summed counts."""
    os.makedirs(base, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue[WorkerCounts] = ctx.Queue()
    t0 = time.monotonic()
    deadline = t0 + seconds
    per = max(1, ops // procs)
    workers = [
        ctx.Process(target=_worker, args=(base, seed * 1000 + i, deadline, per, q), daemon=True)
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    rep = Report()
    try:
        for _ in workers:
            n, counts = q.get(timeout=seconds + 120)
            rep.ops += n
            rep.counts.update(counts)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
                w.join()
    rep.seconds = time.monotonic() - t0
    return rep


def format_report(label: str, rep: Report) -> str:
    """One line: ops, rate, errno counts (ESTALE and EIO always shown)."""
    errs = rep.errors()
    shown = {"ESTALE": errs.get("ESTALE", 0), "EIO": errs.get("EIO", 0), **dict(errs)}
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    rate = rep.ops / rep.seconds if rep.seconds else 0.0
    odd = rep.unexpected()
    if odd:
        text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(odd.items())) + ")"
    return f"{label:<10} {rep.ops:>9} ops {rep.seconds:7.1f} s {rate:8.0f} ops/s  {text}"
