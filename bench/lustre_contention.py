#!/usr/bin/env python3
"""Seed 002's contention curve: errors reaching a process per 1,000 opens, against renamers.

"The retry is only once, so a contended file can still fail" (the seed), measured: for every
variant of the ``lustre`` backend, two client mounts of one store; on client A one real process
opens the file N times, alternating a plain open (``cat``'s O_RDONLY) and a create
(``open(O_CREAT)``), while K real processes on client B each loop "create a temporary file,
rename it over the target" every ``--period`` seconds (K = 1, 2, 4, 8). Natural mode: nothing
is forced; the open by FID may be delayed a little (``--open-delay``, default 1 ms:
``ll_file_open=delay:S``, OBD_FAIL_LLITE_OPEN_DELAY) to widen the window. ENOENT and ESTALE
are counted apart, per kind of open; the table, an ASCII plot and an SVG plot come out, and
``--json`` keeps the counts.

    sudo /opt/stackfs-venv/bin/python bench/lustre_contention.py --opens 400

Figures depend on the machine's load and core count (say so when quoting them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackfs.runtime import lifecycle
from stackfs.repro.context import StackContext
from stackfs.repro.present import table

VARIANTS = ("buggy", "lu-8371", "lu-14949", "estale-by-fid")
RENAMERS = (1, 2, 4, 8)
OPEN_DELAY = 0.001
PERIOD = 0.01
TARGET = "f"

#: the opener: N opens of the target, alternating O_RDONLY and O_WRONLY|O_CREAT; prints counts
OPENER = r"""
import errno, json, os, sys
path, n = sys.argv[1], int(sys.argv[2])
out = {k: {"ok": 0, "ENOENT": 0, "ESTALE": 0, "other": 0} for k in ("cat", "create")}
for i in range(n):
    kind = "cat" if i % 2 == 0 else "create"
    flags = os.O_RDONLY if kind == "cat" else os.O_WRONLY | os.O_CREAT
    try:
        os.close(os.open(path, flags, 0o644))
        out[kind]["ok"] += 1
    except OSError as exc:
        out[kind][errno.errorcode.get(exc.errno, "other") if exc.errno in
                  (errno.ENOENT, errno.ESTALE) else "other"] += 1
print(json.dumps(out))
"""

#: a renamer on client B: every PERIOD seconds, create a temporary file and rename it over the
#: target (a writer publishing the file atomically), until killed
RENAMER = r"""
import os, sys
import time
d, me, period = sys.argv[1], sys.argv[2], float(sys.argv[3])
i = 0
while True:
    time.sleep(period)
    tmp = os.path.join(d, f".r{me}.{i}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    os.rename(tmp, os.path.join(d, "f"))
    i += 1
"""


def measure(
    variant: str, renamers: int, opens: int, scratch: Path, period: float, open_delay: float
) -> dict:
    """One configuration: mount A and B, run the opener against K renamers."""
    work = scratch / f"{variant}-{renamers}"
    work.mkdir(parents=True)
    with lifecycle.Stack(log_dir=work / "logs") as st:
        ctx = StackContext(work, st)
        a = ctx.backend(
            "lustre",
            variant=variant,
            files={TARGET: b"v0\n"},
            inject=[f"ll_file_open=delay:{open_delay}"] if open_delay else [],
            options=["client=A"],
        )
        b = ctx.backend("lustre", role="lustre2", variant=variant, store_of=a, options=["client=B"])
        os.stat(a.mnt / TARGET)  # client A caches the dentry
        movers = [
            subprocess.Popen(
                [sys.executable, "-c", RENAMER, str(b.mnt), str(i), str(period)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(renamers)
        ]
        try:
            time.sleep(0.05)  # the renamers are running before the first open
            t0 = time.monotonic()
            res = subprocess.run(
                [sys.executable, "-c", OPENER, str(a.mnt / TARGET), str(opens)],
                capture_output=True,
                timeout=600,
                check=True,
            )
            seconds = time.monotonic() - t0
        finally:
            for p in movers:
                p.kill()
            for p in movers:
                p.wait(timeout=10)
        counts = json.loads(res.stdout)
    return {
        "variant": variant,
        "renamers": renamers,
        "opens": opens,
        "seconds": seconds,
        "counts": counts,
    }


def per_1000(row: dict, kind: str, err: str) -> float:
    c = row["counts"][kind]
    n = sum(c.values())
    return 1000.0 * c[err] / n if n else 0.0


def ascii_plot(rows: list[dict], width: int = 48) -> list[str]:
    """Errors (ENOENT + ESTALE, both kinds of open) per 1,000 opens, one bar per row."""
    totals = [
        (r, sum(per_1000(r, k, e) for k in ("cat", "create") for e in ("ENOENT", "ESTALE")) / 2)
        for r in rows
    ]
    top = max((t for _r, t in totals), default=0.0) or 1.0
    out = [
        f"errors reaching the process per 1,000 opens, cat and create together "
        f"(longest bar = {top:.0f})"
    ]
    for r, t in totals:
        bar = "#" * round(width * t / top)
        out.append(f"  {r['variant']:<14} K={r['renamers']}  {t:7.1f} |{bar}")
    return out


def svg_plot(rows: list[dict], path: Path) -> None:
    """A small line plot: per variant, errors per 1,000 opens against K."""
    colours = {
        "buggy": "#d62728",
        "lu-8371": "#ff7f0e",
        "lu-14949": "#2ca02c",
        "estale-by-fid": "#1f77b4",
    }
    w, h, m = 420, 260, 40
    pts: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        v = sum(per_1000(r, k, e) for k in ("cat", "create") for e in ("ENOENT", "ESTALE")) / 2
        pts.setdefault(r["variant"], []).append((r["renamers"], v))
    top = max((v for p in pts.values() for _k, v in p), default=0.0) or 1.0

    def xy(k: int, v: float) -> tuple[float, float]:
        x = m + (w - 2 * m) * RENAMERS.index(k) / (len(RENAMERS) - 1)
        return x, h - m - (h - 2 * m) * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="10">',
        f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
        f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
        f'<text x="{m}" y="{m - 8}">errors per 1,000 opens (max {top:.0f})</text>',
    ]
    for k in RENAMERS:
        x, _ = xy(k, 0)
        parts.append(f'<text x="{x - 3}" y="{h - m + 14}">{k}</text>')
    parts.append(f'<text x="{w / 2 - 40}" y="{h - 6}">renamers on client B</text>')
    for i, (variant, p) in enumerate(sorted(pts.items())):
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(k, v) for k, v in sorted(p)))
        c = colours.get(variant, "black")
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{line}"/>')
        parts.append(f'<text x="{w - m - 80}" y="{m + 12 * i}" fill="{c}">{variant}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--opens",
        type=int,
        default=400,
        metavar="N",
        help="opens per configuration, half plain, half O_CREAT (default 400)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated (default {','.join(VARIANTS)})",
    )
    ap.add_argument(
        "--renamers",
        default=",".join(map(str, RENAMERS)),
        help="comma-separated counts of renamers on client B (default 1,2,4,8)",
    )
    ap.add_argument(
        "--period",
        type=float,
        default=PERIOD,
        metavar="S",
        help=f"seconds between two renames of one renamer (default {PERIOD:g})",
    )
    ap.add_argument(
        "--open-delay",
        type=float,
        default=OPEN_DELAY,
        metavar="S",
        help=f"ll_file_open delay on client A (default {OPEN_DELAY:g}; 0: none)",
    )
    ap.add_argument("--json", type=Path, help="write every count here")
    ap.add_argument("--svg", type=Path, help="write the plot here (default: in the scratch dir)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("lustre_contention: needs root (FUSE mounts)", file=sys.stderr)
        return 2
    variants = [v for v in args.variants.split(",") if v]
    ks = [int(k) for k in args.renamers.split(",") if k]
    scratch = Path(tempfile.mkdtemp(prefix="stackfs-lustre-bench-"))
    rows = []
    t0 = time.monotonic()
    for v in variants:
        for k in ks:
            row = measure(v, k, args.opens, scratch, args.period, args.open_delay)
            rows.append(row)
            print(
                f"  {v:<14} K={k}: {row['opens']} opens in {row['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    headers = [
        "variant",
        "renamers",
        "opens",
        "cat ENOENT",
        "cat ESTALE",
        "create ENOENT",
        "create ESTALE",
        "opens/s",
    ]
    body = [
        [
            r["variant"],
            str(r["renamers"]),
            str(r["opens"]),
            *(f"{per_1000(r, k, e):.1f}" for k in ("cat", "create") for e in ("ENOENT", "ESTALE")),
            f"{r['opens'] / r['seconds']:.0f}",
        ]
        for r in rows
    ]
    print(
        f"Errors reaching the process per 1,000 opens of each kind (natural mode, open by FID "
        f"delayed {args.open_delay * 1000:g} ms, one rename per renamer every "
        f"{args.period * 1000:g} ms), {os.cpu_count()} CPUs, "
        f"{time.monotonic() - t0:.0f} s:"
    )
    print(table(headers, body))
    print()
    print("\n".join(ascii_plot(rows)))
    svg = args.svg or scratch / "lustre-contention.svg"
    svg_plot(rows, svg)
    print(f"\nplot: {svg}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
