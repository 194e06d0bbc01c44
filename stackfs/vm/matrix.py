"""``stackfs vm matrix``: every reproducer scenario x variant on each kernel.

A *cell* is one kernel and a list of scenarios: one VM boot that runs ``stackfs repro run NAME
--json --junit`` for each scenario in the guest (forced mode, one run per case x variant), with
the reports in the shared results directory. Cells are independent: ``stackfs vm matrix`` runs
its cells one after the other; to spread them over workers or CI jobs, give each its own
``--kernels K --scenarios S`` (``tests/vm/test_vm_matrix_cells.py`` is the pytest-xdist form).

Results, under ``--out DIR``: ``DIR/KERNEL/SCENARIO.json`` (the guest's ``stackfs repro run``
JSON), ``DIR/KERNEL/dmesg.txt``, ``DIR/KERNEL/junit.xml`` (one JUnit file per kernel, the
scenarios' suites merged), ``DIR/matrix.json`` (every row and every cell's VM run).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from stackfs.vm import boot
from stackfs.vm.kernels import Kernel


@dataclass
class Row:
    kernel: str
    scenario: str
    case: str
    variant: str
    expected: str
    observed: str
    matched: bool
    seconds: float  # the run's total time in the guest


@dataclass
class Cell:
    kernel: Kernel
    scenarios: list[str]
    rows: list[Row]
    vm: boot.VMRun | None
    error: str | None = None  # a scenario that produced no result, the VM that did not boot

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.rows) and all(r.matched for r in self.rows)


def scenario_names(selected: str | None = None) -> list[str]:
    """Registered scenarios (all, or the comma-separated selection, checked)."""
    from stackfs.repro import registry

    known = [s.name for s in registry.scenarios()]
    if not selected:
        return known
    names = [n.strip() for n in selected.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown scenario {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def guest_script(scenarios: list[str], out: Path, variant: str | None = None) -> list[str]:
    """The guest command of a cell: each scenario in turn, whatever the previous one did."""
    steps = []
    for name in scenarios:
        argv = [
            sys.executable,
            "-m",
            "stackfs",
            "repro",
            "run",
            name,
            "--report-dir",
            str(out / "reports"),
            "--json",
            str(out / f"{name}.json"),
            "--junit",
            str(out / f"{name}.junit.xml"),
        ]
        if variant:
            argv += ["--variant", variant]
        steps.append(shlex.join(argv))
    return ["sh", "-c", "; ".join(steps)]


def rows_of(kernel: str, data: dict) -> list[Row]:
    return [
        Row(
            kernel,
            r["scenario"],
            r.get("case", ""),
            r["variant"],
            r["expected"],
            r["observed"],
            bool(r["matched"]),
            round(float(r.get("total_seconds", 0)), 3),
        )
        for r in data.get("runs", [])
    ]


def merge_junit(parts: list[Path], dest: Path, kernel: str) -> None:
    """One JUnit file per kernel: the scenarios' <testsuite>s, named after the kernel."""
    root = ET.Element("testsuites", name=f"stackfs vm matrix {kernel}")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for part in parts:
        for ts in ET.parse(part).getroot().iter("testsuite"):
            ts.set("name", f"{kernel}: {ts.get('name', '')}")
            for key in totals:
                totals[key] += int(ts.get(key, "0"))
            root.append(ts)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)


def run_cell(
    kernel: Kernel,
    scenarios: list[str],
    out: Path,
    *,
    timeout: float | None = None,
    variant: str | None = None,
    memory: str = "2G",
    cpus: int = 2,
    log: IO[str] | None = None,
) -> Cell:
    """Boot ``kernel`` once and run ``scenarios`` in it; rows from the guest's JSON."""
    kdir = (out / kernel.release).resolve()
    kdir.mkdir(parents=True, exist_ok=True)
    for name in scenarios:
        (kdir / f"{name}.json").unlink(missing_ok=True)
    vm = boot.run(
        kernel,
        guest_script(scenarios, kdir, variant),
        kdir,
        timeout=timeout,
        memory=memory,
        cpus=cpus,
        output=log,
    )
    rows: list[Row] = []
    missing = []
    parts = []
    for name in scenarios:
        js = kdir / f"{name}.json"
        if not js.exists():
            missing.append(name)
            continue
        rows += rows_of(kernel.release, json.loads(js.read_text()))
        if (x := kdir / f"{name}.junit.xml").exists():
            parts.append(x)
    if parts:
        merge_junit(parts, kdir / "junit.xml", kernel.release)
    error = None
    if vm.timed_out:
        error = f"the VM did not finish within {timeout:g} s"
    elif vm.guest is None:
        error = f"the guest never ran the scenarios (vng exit {vm.status}; see {kdir})"
    elif missing:
        error = f"no result from {', '.join(missing)} (see {kdir})"
    return Cell(kernel, scenarios, rows, vm, error)


def write_json(cells: list[Cell], path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "command": "vm matrix",
                "seconds": round(seconds, 3),
                "ok": all(c.ok for c in cells),
                "rows": [asdict(r) for c in cells for r in c.rows],
                "cells": [
                    {
                        "kernel": c.kernel.release,
                        "scenarios": c.scenarios,
                        "ok": c.ok,
                        "error": c.error,
                        "vm": c.vm.to_json() if c.vm else None,
                        "junit": str(Path(c.vm.results) / "junit.xml") if c.vm else None,
                    }
                    for c in cells
                ],
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=1,
        )
        + "\n"
    )


def table_rows(cells: list[Cell]) -> list[list[str]]:
    out = []
    for c in cells:
        for r in c.rows:
            out.append(
                [
                    r.kernel,
                    r.scenario,
                    r.case,
                    r.variant,
                    r.expected,
                    r.observed,
                    "ok" if r.matched else "MISMATCH",
                    f"{r.seconds:.1f}s",
                ]
            )
        if c.error:
            out.append([c.kernel.release, ",".join(c.scenarios), "", "", "", "ERROR", c.error, ""])
    return out
