"""Minimise a stored schedule: ddmin over its forced decisions, as ``stackfs explore`` does.

``stackfs explore`` minimises the first failing schedule it finds; this minimises a schedule
already stored (``stackfs/repro/schedules/SCENARIO.VARIANT.CASE.json``) the same way
(:func:`stackfs.repro.explore.minimise_failing`: a removed decision is left to the free run,
a candidate is kept when it gives the file's outcome in 2 replays in a row). The outcome is
the file's ``"expect"``, else the variant's expectation in its case. It writes the minimised
schedule next to its reports and prints it; storing it is a person's decision (docs/explore.md
says which GFS2 schedules were stored minimised, and why the others were not)::

    sudo /opt/stackfs-venv/bin/python bench/minimise_schedule.py \\
        stackfs/repro/schedules/gfs-mmap-abba.fixed-prefault.write.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stackfs.kernel.sched import Schedule
from stackfs.repro import registry
from stackfs.repro.explore import MINIMISE_RUNS, minimise_failing
from stackfs.repro.schedules import expected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("schedule", type=Path, help="a stored schedule file")
    ap.add_argument("--runs", type=int, default=MINIMISE_RUNS, help="ddmin's candidates at most")
    ap.add_argument("--report-dir", type=Path, help="default: a new directory in /tmp")
    args = ap.parse_args()
    stored = Schedule.read(args.schedule)
    name, variant, case = args.schedule.name[: -len(".json")].split(".")
    scenario = registry.get(name)
    want = str(expected(stored, scenario.variant(variant).expect_for(case)))
    root = args.report_dir or Path(tempfile.mkdtemp(prefix="stackfs-minimise-"))
    t0 = time.monotonic()
    small, runs = minimise_failing(
        scenario, variant, case, stored, want, report_root=root, minimise_runs=args.runs
    )
    seconds = time.monotonic() - t0
    small.meta["minimised_from"] = str(args.schedule)
    path = small.write(root / "minimised.json")
    print(
        f"{args.schedule.name}: {len(stored.forced())} forced decisions -> "
        f"{len(small.forced())} ({len(small.decisions)} kept) giving {want}; {runs} runs, "
        f"{seconds:.0f} s; {path}"
    )
    for line in small.render():
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
