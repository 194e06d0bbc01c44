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
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from stackfs.vm import boot
from stackfs.vm.hungtask import MARK
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
    #: the guest kernel's hung-task detector on this run (:func:`stackfs.vm.hungtask.cross_check`)
    kernel_check: str = ""
    kernel_reports: list[dict] = field(default_factory=list)
    report_dir: str = ""


@dataclass
class Cell:
    kernel: Kernel
    scenarios: list[str]
    rows: list[Row]
    vm: boot.VMRun | None
    error: str | None = None  # a scenario that produced no result, the VM that did not boot
    #: the guest kernel's hung-task reports of tasks that belong to no row
    kernel_unmatched: list[str] = field(default_factory=list)

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


def _threshold(name: str) -> float:
    from stackfs.repro import registry

    return float(registry.get(name).threshold)


def split(scenarios: list[str], parts: int, variant: str | None = None) -> list[list[str]]:
    """``scenarios`` in at most ``parts`` groups of about as many rows each (the longest
    first into the group with the fewest rows), one VM each; the order inside a group kept."""
    from stackfs.vm.progress import expected_rows

    parts = max(1, min(parts, len(scenarios)))
    groups: list[list[str]] = [[] for _ in range(parts)]
    load = [0] * parts
    for name in sorted(scenarios, key=lambda n: -expected_rows([n], variant)):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += expected_rows([name], variant)
    order = {n: i for i, n in enumerate(scenarios)}
    return [sorted(g, key=order.__getitem__) for g in groups if g]


def guest_script(
    scenarios: list[str], out: Path, variant: str | None = None, factor: str = "1"
) -> list[str]:
    """The guest command of a cell: each scenario in turn, whatever the previous one did.
    Before each, the kernel's hung-task timeout for that scenario's watchdog threshold
    (:func:`stackfs.vm.boot.hung_task_secs`) and a :data:`stackfs.vm.hungtask.MARK` line in
    the kernel log, so the cross-check knows which scenario a kernel report belongs to; both
    only in a virtme-ng guest (:func:`stackfs.vm.guest.in_virtme_guest`), never on a host."""
    steps = []
    for name in scenarios:
        secs = boot.hung_task_secs(factor, _threshold(name))
        mark = shlex.join(["echo", f"{MARK}{name} hung_task_timeout_secs={secs}"])
        steps.append(
            "grep -q virtme_hostname= /proc/cmdline && "
            f"{{ echo {secs} > /proc/sys/kernel/hung_task_timeout_secs; {mark} > /dev/kmsg; }}"
        )
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
            report_dir=str(r.get("report_dir") or ""),
        )
        for r in data.get("runs", [])
    ]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kernel_checks(kernel: Kernel, rows: list[Row], dmesg: Path, factor: str) -> list[str]:
    """Cross-check each row with the guest kernel's hung-task reports in ``dmesg``
    (:mod:`stackfs.vm.hungtask`); sets ``Row.kernel_check``, appends the kernel's lines to the
    run's report text; returns the kernel's reports no row's tasks account for."""
    from stackfs.vm import hungtask
    from stackfs.vm.kernels import config

    try:
        sections = hungtask.parse(dmesg.read_text(errors="replace"))
        guest = json.loads((dmesg.parent / "guest.json").read_text())
    except (OSError, ValueError):
        return ["no dmesg or guest.json from the guest"]
    skipped = (guest.get("hung_task") or {}).get("skipped")
    if skipped:  # the stand-in vng of the tests: the "guest" is this host
        for row in rows:
            row.kernel_check = f"{hungtask.NOT_ITS}: {skipped}"
        return []
    blocker = config(kernel).get("CONFIG_DETECT_HUNG_TASK_BLOCKER") == "y" or any(
        r.owner_pid is not None for rs in sections.values() for r in rs
    )
    used: set[tuple[str, int]] = set()
    for row in rows:
        rdir = Path(row.report_dir) if row.report_dir else None
        result = _load(rdir / "result.json") if rdir else None
        report = _load(rdir / "report.json") if rdir else None
        kreports = sections.get(row.scenario, [])
        timeout = boot.hung_task_secs(factor, _threshold(row.scenario))
        check = hungtask.cross_check(
            result or {}, report, kreports, blocker=blocker, timeout=timeout
        )
        row.kernel_check = check.text
        row.kernel_reports = [r.to_json() for r in check.reports]
        used |= {(row.scenario, r.pid) for r in check.reports}
        if rdir is not None and (rdir / "report.txt").exists():
            with open(rdir / "report.txt", "a") as f:
                f.write("\n".join(check.render()) + "\n")
    return [
        f"{name or 'before the first scenario'}: {r.comm}:{r.pid} blocked > {r.seconds} s"
        for name, rs in sections.items()
        for r in rs
        if (name, r.pid) not in used and r.seconds
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
    part: str | None = None,
) -> Cell:
    """Boot ``kernel`` once and run ``scenarios`` in it; rows from the guest's JSON, each
    cross-checked with the guest kernel's hung-task detector. ``part``: this cell's
    subdirectory when a kernel's scenarios are split over several VMs."""
    kdir = (out / kernel.release if part is None else out / kernel.release / part).resolve()
    kdir.mkdir(parents=True, exist_ok=True)
    for name in scenarios:
        (kdir / f"{name}.json").unlink(missing_ok=True)
    shutil.rmtree(kdir / "reports", ignore_errors=True)  # a reused --out: only this run's rows
    factor = boot.timeout_factor(boot.kvm_usable())
    vm = boot.run(
        kernel,
        guest_script(scenarios, kdir, variant, factor),
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
    unmatched = kernel_checks(kernel, rows, kdir / "dmesg.txt", factor) if vm.guest else []
    error = None
    if vm.timed_out:
        error = f"the VM did not finish within {timeout:g} s"
    elif vm.guest is None:
        error = f"the guest never ran the scenarios (vng exit {vm.status}; see {kdir})"
    elif missing:
        error = f"no result from {', '.join(missing)} (see {kdir})"
    return Cell(kernel, scenarios, rows, vm, error, unmatched)


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
                        "kernel_unmatched": c.kernel_unmatched,
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
                    r.kernel_check,
                ]
            )
        if c.error:
            out.append(
                [c.kernel.release, ",".join(c.scenarios), "", "", "", "ERROR", c.error, "", ""]
            )
    return out
