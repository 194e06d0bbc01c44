"""The in-flight table's cost per FUSE request, against a bare dict insert/pop in the same run.

Every request a daemon serves goes through ``InflightTable.begin``/``end``
(stackfs/kernel/inflight.py); this prints the median cost of one pair and its ratio to the floor
(a dict insert and pop of a small object), both measured here, now::

    /opt/stackfs-venv/bin/python bench/inflight_bench.py [--n 20000] [--rounds 7]

Moved here from a timed unit test (issue 14): a wall-clock bound breaks on a slow machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from stackfs.kernel.inflight import InflightTable


def _inflight(n: int) -> float:
    table = InflightTable()
    t0 = time.perf_counter()
    for i in range(n):
        table.end(table.begin("getattr", i, None, 1234))
    return (time.perf_counter() - t0) / n


def _floor(n: int) -> float:
    d: dict[int, tuple[str, int]] = {}
    t0 = time.perf_counter()
    for i in range(n):
        d[i] = ("getattr", i)
        d.pop(i, None)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000, help="begin/end pairs a round")
    p.add_argument("--rounds", type=int, default=7, help="rounds (the median is printed)")
    args = p.parse_args(argv)
    ours = statistics.median(_inflight(args.n) for _ in range(args.rounds))
    floor = statistics.median(_floor(args.n) for _ in range(args.rounds))
    print(f"inflight begin+end: {ours * 1e6:.2f} us a request")
    print(f"dict insert+pop (floor): {floor * 1e6:.2f} us")
    print(f"ratio: {ours / floor:.1f}x the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
