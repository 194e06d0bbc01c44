"""What ``stackfs repro run`` and ``stackfs demo`` hand to the harnesses around them.

* ``--kmsg``: each run's findings go to the kernel log in the kernel's formats
  (:mod:`stackfs.watchdog.kmsg`), read from the run's ``report.json``, so fstests' ``_check_dmesg``
  sees them;
* ``--junit FILE``: JUnit XML, one ``<testcase>`` per scenario x case x variant x iteration
  (``classname`` = ``stackfs.SCENARIO.CASE``, ``name`` = ``VARIANT #ITERATION``), the run's
  report text as ``<system-out>``, a ``<failure>`` when the observed outcome did not match the
  variant's expectation, an ``<error>`` on a set-up error, ``<skipped>`` when the scenario cannot
  run on this machine; a natural batch adds one ``<testcase>`` per variant and case (``name`` =
  ``VARIANT natural batch``) with its counts (N runs: R reproduced, C completed, O other, each
  other outcome named) as ``<properties>`` and ``<system-out>``, and a ``<failure>`` when the
  batch fails its variant (:attr:`stackfs.repro.stats.Summary.failure`);
* :data:`EXIT_SKIP` (4, kselftest's KSFT_SKIP) when a scenario cannot run here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stackfs.repro import outcome
from stackfs.repro.runner import Plan, RunResult
from stackfs.repro.stats import Summary

#: kselftest's exit status for "skipped" (tools/testing/selftests/kselftest.h KSFT_SKIP)
EXIT_SKIP = 4

#: what ``--help`` of ``stackfs repro run``, ``stackfs explore`` and ``stackfs demo`` says of
#: kselftest (docs/kselftest.md)
KSELFTEST_HELP = (
    "Under kselftest: the exit statuses 0, 1 and 4 are kselftest's KSFT_PASS, KSFT_FAIL and "
    "KSFT_SKIP (kselftest's runner.sh reports a set-up error's 2 as not ok); --ktap FILE or - "
    "writes KTAP version 1 (docs/kselftest.md)."
)

#: the ``Exit status:`` paragraph of ``stackfs repro run --help`` and ``stackfs demo --help``
EXIT_STATUS_HELP = (
    "Exit status: 0 every run matched its variant's expectation; 1 a run did not (or, for "
    "demo, something was left mounted); 2 set-up error or bad command line; 4 skipped: the "
    "scenario cannot run on this machine (a kernel feature or tool is missing; the reason is "
    "printed); 130 interrupted."
)


def kmsg_run(r: RunResult) -> str | None:
    """Write run ``r``'s findings to /dev/kmsg; an error message, or None."""
    from stackfs.watchdog import kmsg

    path = r.files.get("json") or (
        str(Path(r.report_dir) / "report.json") if r.report_dir else None
    )
    if not path or not os.path.exists(path):
        return None
    try:
        kmsg.write_report(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        return f"{path}: {exc}"
    except kmsg.KmsgError as exc:
        return str(exc)
    return None


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot carry (terminal escapes, NULs)."""
    return _XML_BAD.sub("", text)


def _report_text(r: RunResult) -> str:
    out = []
    for key in ("text",):
        p = r.files.get(key)
        if p and os.path.exists(p):
            out.append(Path(p).read_text(errors="replace"))
    summary = Path(r.report_dir or "", "summary.txt")
    if r.report_dir and summary.exists():
        out.insert(0, summary.read_text(errors="replace"))
    return "\n".join(out) or r.summary or ""


def _case(r: RunResult) -> ET.Element:
    tc = ET.Element(
        "testcase",
        classname=f"stackfs.{r.scenario}.{r.case}",
        name=f"{r.variant} #{r.iteration}",
        time=f"{r.total_seconds:.3f}",
    )
    msg = f"expected {r.expected}, observed {r.observed}"
    status = outcome.status(r.observed, r.matched)
    if status == outcome.ERROR:
        el = ET.SubElement(tc, "error", message=r.error or "set-up error", type=r.observed)
        el.text = xml_text("\n".join(r.problems or [r.error or r.summary or ""]))
    elif status == outcome.FAIL:
        el = ET.SubElement(tc, "failure", message=msg, type="mismatch")
        el.text = xml_text("\n".join(r.problems or [r.summary or ""]))
    ET.SubElement(tc, "system-out").text = xml_text(
        f"seed {r.seed}, {r.mode} mode, expected {r.expected}, observed {r.observed}; report: "
        f"{r.report_dir or '-'}\n\n" + _report_text(r)
    )
    return tc


def batch_case(s: Summary) -> ET.Element:
    """A natural batch's test case: its counts, and a ``<failure>`` when it fails its variant."""
    tc = ET.Element(
        "testcase",
        classname=f"stackfs.{s.scenario}.{s.case}",
        name=f"{s.variant} {s.mode} batch",
        time=f"{s.wall:.3f}",
    )
    props = ET.SubElement(tc, "properties")
    counts = {
        "runs": s.runs,
        "reproduced": s.reproduced,
        "completed": s.completed,
        **({"in_window": s.in_window} if s.window else {}),
        "other": s.other,
        **{f"other:{what}": n for what, n in sorted(s.others.items())},
    }
    for name, n in counts.items():
        ET.SubElement(props, "property", name=name, value=str(n))
    if s.failure is not None:
        el = ET.SubElement(tc, "failure", message=xml_text(s.failure), type="batch")
        el.text = xml_text("\n".join(s.problems or [s.verdict()]))
    ET.SubElement(tc, "system-out").text = xml_text(
        f"seed {s.seed}, {s.mode} mode, expected {s.expected}: {s.verdict()}"
    )
    return tc


def skipped_case(scenario: str, case: str, variant: str, iteration: int, reason: str) -> ET.Element:
    tc = ET.Element(
        "testcase", classname=f"stackfs.{scenario}.{case}", name=f"{variant} #{iteration}", time="0"
    )
    ET.SubElement(tc, "skipped", message=reason)
    return tc


def write_junit(
    path: str | os.PathLike[str],
    suite: str,
    results: Sequence[RunResult],
    skipped: Sequence[ET.Element] = (),
    seconds: float | None = None,
    batches: Sequence[Summary] = (),
) -> None:
    """One ``<testsuite>`` in a ``<testsuites>``: every run, the batches' verdicts (natural
    mode), then the skipped ones."""
    cases = [_case(r) for r in results] + [batch_case(s) for s in batches] + list(skipped)
    statuses = [outcome.status(r.observed, r.matched) for r in results]
    failures = statuses.count(outcome.FAIL) + sum(1 for s in batches if s.failure is not None)
    errors = statuses.count(outcome.ERROR)
    total = seconds if seconds is not None else sum(r.total_seconds for r in results)
    attrs: dict[str, Any] = {
        "name": suite,
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": str(len(skipped)),
        "time": f"{total:.3f}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname(),
    }
    root = ET.Element(
        "testsuites",
        name="stackfs",
        tests=attrs["tests"],
        failures=attrs["failures"],
        errors=attrs["errors"],
        skipped=attrs["skipped"],
        time=attrs["time"],
    )
    ts = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="kernel", value=os.uname().release)
    ts.extend(cases)
    ET.indent(root)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def skipped_cases(p: Plan, reason: str) -> list[ET.Element]:
    """A ``<skipped>`` test case for every run of plan ``p``."""
    return [
        skipped_case(p.scenario.name, c, v, i, reason)
        for v in p.variants
        for c in p.cases
        for i in range(1, p.iterations + 1)
    ]
