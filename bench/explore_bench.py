"""Rediscovery by exploration: ``stackfs explore`` over every variant and case of the seeds.

For each (scenario, variant, case) it runs :func:`stackfs.repro.explore.explore` with a budget
and a strategy, and prints one Markdown row: expected outcome, strategy, runs, distinct
schedules, outcomes, the run and seconds of the first failure, total seconds, the verdict.
This is how the table in docs/explore.md is measured::

    sudo /opt/stackfs-venv/bin/python bench/explore_bench.py --budget 12
    sudo /opt/stackfs-venv/bin/python bench/explore_bench.py --only lustre-open-rename \\
        --strategy dfs --budget 30 --json out.json

Budgets live here and in the CLI, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from stackfs.repro import registry
from stackfs.repro.explore import STRATEGIES, explore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated scenario names (default: all)")
    ap.add_argument("--variant", help="one variant")
    ap.add_argument("--bugs-only", action="store_true", help="only the variants with a bug")
    ap.add_argument("--strategy", choices=STRATEGIES, default="dfs")
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-minimise", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else [s.name for s in registry.scenarios()]
    root = Path(tempfile.mkdtemp(prefix="stackfs-explore-bench-"))
    rows, data = [], []
    print(
        "| scenario | variant | case | expected | strategy | runs | distinct | outcomes "
        "| first failure | seconds | verdict |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        scen = registry.get(name)
        for v in scen.variants:
            if args.variant and v.name != args.variant:
                continue
            for c in scen.cases:
                if args.bugs_only and not v.is_bug_in(c.name):
                    continue
                ex = explore(
                    scen,
                    v.name,
                    c.name,
                    report_root=root / name / v.name / c.name,
                    strategy=args.strategy,
                    budget=args.budget,
                    seed=args.seed,
                    minimise_runs=0 if args.no_minimise else 12,
                )
                outcomes = ", ".join(f"{k} {n}" for k, n in sorted(ex.outcomes().items()))
                first = (
                    f"run {ex.first_failure}, {ex.first_failure_seconds:.1f} s"
                    if ex.first_failure
                    else "-"
                )
                row = (
                    f"| {name} | {v.name} | {c.name} | {ex.expected} | {ex.strategy} "
                    f"| {len(ex.runs)} | {ex.distinct()} | {outcomes} | {first} "
                    f"| {ex.seconds:.1f} | {'matches' if ex.matched else 'DOES NOT MATCH'} |"
                )
                print(row, flush=True)
                rows.append(row)
                data.append(ex.to_json())
    print(f"\nreports in {root}/")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
