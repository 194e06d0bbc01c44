"""Checks on the watchdog's report (its JSON form) and on the data, for scenarios to compose.

Each check returns a list of problems (empty: fine), so a scenario's ``evidence``/``verify`` is a
sum of a few of them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Report = dict[str, Any]


def events(report: Report, type_: str) -> list[dict[str, Any]]:
    """The modelled events of ``type_`` in the report."""
    return [e for e in report.get("events") or [] if e.get("type") == type_]


def chains(event: dict[str, Any]) -> list[list[str]]:
    """The model call chains of an event's tasks."""
    return [list(t.get("chain") or []) for t in event.get("tasks") or []]


def mentions(obj: Any, word: str) -> bool:
    """``word`` appears anywhere in ``obj`` (a report part)."""
    return word in json.dumps(obj, default=str)


def hung_comms(report: Report) -> set[str]:
    """Command names of the tasks the watchdog reported hung."""
    return {str((h.get("task") or {}).get("comm")) for h in report.get("hangs") or []}


def blocked_comms(report: Report) -> set[str]:
    """Command names of every blocked task the report shows (hung or in the wait-for graph)."""
    return hung_comms(report) | {str(t.get("comm")) for t in report.get("blocked") or []}


def blocked_task(report: Report, comm: str) -> list[str]:
    """A task called ``comm`` is reported blocked: hung for the threshold, or blocked in the
    wait-for graph (a workload task that blocked a moment after the task whose hang triggered
    the report is in the graph before it is over the threshold)."""
    comms = blocked_comms(report)
    if comm in comms:
        return []
    return [f"no blocked task named {comm!r} in the report "
            f"(blocked: {', '.join(sorted(comms)) or '-'})"]


def recursive_lock(report: Report, via: str | None = None, fsname_kind: str | None = None
                   ) -> list[str]:
    """The report names a recursive lock: a cycle of one task through a lock it holds, or a
    ``recursive_locking`` event (optionally of the daemon of kind ``fsname_kind``, and with
    ``via`` in a task's call chain)."""
    problems = []
    evs = events(report, "recursive_locking")
    if fsname_kind is not None:
        evs = [e for e in evs if f":{fsname_kind}:" in str(e.get("fsname", ""))]
    cycle = report.get("cycle") or {}
    if not evs and cycle.get("kind") != "recursive_locking":
        problems.append("no recursive lock in the report (no recursive_locking event"
                        + (f" from the {fsname_kind} daemon" if fsname_kind else "")
                        + f", cycle kind {cycle.get('kind')!r})")
    if via is not None and not any(mentions(e, via) for e in evs) and not mentions(cycle, via):
        problems.append(f"the recursive lock does not show {via} in a call chain")
    return problems


def cycle_present(report: Report) -> list[str]:
    if report.get("cycle"):
        return []
    return ["no cycle in the wait-for graph"]


def oops(report: Report, frames: Iterable[str], comms: Iterable[str] | None = None,
         min_tasks: int = 1) -> list[str]:
    """An ``oops`` event whose call chain (of the task that hit it) contains ``frames`` in this
    order (outermost first), naming at least ``min_tasks`` racing tasks, all called one of
    ``comms`` (if given)."""
    want = list(frames)
    evs = events(report, "oops")
    if not evs:
        return ["no oops event in the report"]
    names = set(comms) if comms is not None else None
    for e in evs:
        tasks = e.get("tasks") or []
        if not any(_in_order(c, want) for c in chains(e)):
            continue
        if names is not None and any(t.get("comm") not in names for t in tasks):
            continue
        if len(tasks) >= min_tasks:
            return []
    got = "; ".join(
        f"{e.get('summary')} [" + ", ".join(f"{t.get('comm')}/{t.get('pid')}: "
                                            + " -> ".join(t.get("chain") or [])
                                            for t in e.get("tasks") or []) + "]"
        for e in evs)
    who = f", by tasks named {sorted(names)}" if names is not None else ""
    return [f"no oops with the call chain {' -> '.join(want)}{who} naming {min_tasks}+ "
            f"racing tasks; got: {got}"]


def _in_order(chain: list[str], want: list[str]) -> bool:
    i = 0
    for f in chain:
        if i < len(want) and f == want[i]:
            i += 1
    return i == len(want)


# -- data -----------------------------------------------------------------------------------------


def read_via(path: Path, timeout: float = 5.0) -> bytes | None:
    """Read ``path`` with a real ``cat`` (a wedged mount cannot hang the runner); None if it
    does not exist or cannot be read."""
    try:
        res = subprocess.run(["cat", "--", str(path)], capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return res.stdout if res.returncode == 0 else None


def exists_via(path: Path, timeout: float = 5.0) -> bool | None:
    """``path`` exists (``stat`` by a real process); None if the stat hung."""
    try:
        res = subprocess.run(["stat", "-c", "%i", "--", str(path)], capture_output=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return res.returncode == 0


def content(where: str, path: Path, expected: Iterable[bytes]) -> list[str]:
    """``path`` holds one of ``expected`` (read through a real process)."""
    options = list(expected)
    got = read_via(path)
    if got is None:
        return [f"{where} {path}: cannot be read"]
    if got in options:
        return []
    return [f"{where} {path}: holds {_show(got)}, expected "
            + " or ".join(_show(o) for o in options)]


def absent(where: str, path: Path) -> list[str]:
    e = exists_via(path)
    if e is None:
        return [f"{where} {path}: stat hung"]
    return [f"{where} {path}: still exists"] if e else []


def _show(data: bytes, limit: int = 40) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "") + f" ({len(data)} bytes)"
