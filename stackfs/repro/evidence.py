"""Checks on the watchdog's report (its JSON form) and on the data, for scenarios to compose.

Each check returns a list of problems (empty: fine), so a scenario's ``evidence``/``verify`` is a
sum of a few of them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stackfs.repro.workload import workload_env

Report = dict[str, Any]


def events(report: Report, type_: str) -> list[dict[str, Any]]:
    """The modelled events of ``type_`` in the report."""
    return [e for e in report.get("events") or [] if e.get("type") == type_]


def chains(event: dict[str, Any]) -> list[list[str]]:
    """The model call chains of an event's tasks."""
    return [list(t.get("chain") or []) for t in event.get("tasks") or []]


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
    return [
        f"no blocked task named {comm!r} in the report (blocked: {', '.join(sorted(comms)) or '-'})"
    ]


def recursive_lock(
    report: Report, via: str | None = None, fsname_kind: str | None = None, lock: str | None = None
) -> list[str]:
    """The report names a recursive lock (lockdep's "possible recursive locking detected"):
    a ``recursive_locking`` event, or a one-task cycle of the wait-for graph through a lock the
    task holds, in which

    * the holder of the lock is the waiter itself;
    * the waiter's call chain (the event's ``detail.chain``, the cycle's ``lock_wait`` edge)
      contains ``via`` (if given), e.g. ``osi_VM_FlushPages``;
    * the lock is of class ``lock`` (if given), e.g. ``i_rwsem``;
    * it is in the daemon of kind ``fsname_kind`` (if given; ``stackfs:afs:PID``).

    Only these fields are read: a word elsewhere in the report proves nothing.
    """
    found = [
        _recursive_event(e, via, lock)
        for e in events(report, "recursive_locking")
        if fsname_kind is None or _kind_of(str(e.get("fsname", ""))) == fsname_kind
    ]
    found.append(_recursive_cycle(report, via, lock, fsname_kind))
    if any(not why for why in found):
        return []
    what = (
        "recursive lock"
        + (f" of {lock}" if lock else "")
        + (f" in the {fsname_kind} daemon" if fsname_kind else "")
        + (f" taken via {via}" if via else "")
    )
    return [f"no {what} in the report: " + "; ".join(why for why in found)]


def _kind_of(fsname: str) -> str | None:
    """``stackfs:afs:123`` -> ``afs``."""
    parts = fsname.split(":")
    return parts[1] if len(parts) >= 3 and parts[0] == "stackfs" else None


def _recursive_event(e: dict[str, Any], via: str | None, lock: str | None) -> str:
    """Why the ``recursive_locking`` event ``e`` is not the one wanted ("" when it is)."""
    detail = e.get("detail") or {}
    tasks = e.get("tasks") or []
    name = str(detail.get("lock") or "")
    if len(tasks) < 2 or tasks[0].get("pid") is None or tasks[0].get("pid") != tasks[1].get("pid"):
        return f"event on {name or '?'}: the holder is not the waiter"
    if lock is not None and name.split(" ", 1)[0] != lock:
        return f"event on {name or '?'}: not a {lock}"
    chain = list(detail.get("chain") or [])
    if via is not None and via not in chain:
        return f"event on {name}: the waiter's chain {' -> '.join(chain) or '-'} has no {via}"
    return ""


def _recursive_cycle(
    report: Report, via: str | None, lock: str | None, fsname_kind: str | None
) -> str:
    """Why the report's cycle is not the recursive lock wanted ("" when it is)."""
    cycle = report.get("cycle") or {}
    if cycle.get("kind") != "recursive_locking":
        return f"cycle kind {cycle.get('kind')!r}"
    segs = cycle.get("segments") or []
    if len(segs) != 1 or segs[0].get("waiter") != segs[0].get("holder") or not segs[0].get("lock"):
        return "the cycle is not one task waiting for a lock it holds"
    node = str(segs[0]["lock"])  # "lock:DAEMONPID:i_rwsem ino:N"
    _, daemon, name = (node.split(":", 2) + ["", ""])[:3]
    if lock is not None and name.split(" ", 1)[0] != lock:
        return f"cycle through {name or node}: not a {lock}"
    if fsname_kind is not None:
        fsnames = [
            str(d.get("fsname", ""))
            for d in (report.get("daemons") or {}).values()
            if str(d.get("pid")) == daemon
        ]
        if not any(_kind_of(f) == fsname_kind for f in fsnames):
            return f"cycle through {name}: not in a {fsname_kind} daemon"
    edges = cycle.get("edges") or []
    held = [e for e in edges if e.get("kind") == "held_by" and e.get("src") == node]
    if not any(e.get("dst") == f"task:{segs[0]['waiter']}" for e in held):
        return f"cycle through {name}: no held_by edge to the waiter"
    if via is not None:
        chains = [
            list((e.get("attrs") or {}).get("chain") or [])
            for e in edges
            if e.get("kind") == "lock_wait" and e.get("dst") == node
        ]
        if not any(via in c for c in chains):
            return f"cycle through {name}: the waiter's chain has no {via}"
    return ""


def cycle_present(report: Report) -> list[str]:
    if report.get("cycle"):
        return []
    return ["no cycle in the wait-for graph"]


def oops(
    report: Report, frames: Iterable[str], comms: Iterable[str] | None = None, min_tasks: int = 1
) -> list[str]:
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
        f"{e.get('summary')} ["
        + ", ".join(
            f"{t.get('comm')}/{t.get('pid')}: " + " -> ".join(t.get("chain") or [])
            for t in e.get("tasks") or []
        )
        + "]"
        for e in evs
    )
    who = f", by tasks named {sorted(names)}" if names is not None else ""
    return [
        f"no oops with the call chain {' -> '.join(want)}{who} naming {min_tasks}+ "
        f"racing tasks; got: {got}"
    ]


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
        res = subprocess.run(
            ["cat", "--", str(path)],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=workload_env(),
        )
    except subprocess.TimeoutExpired:
        return None
    return res.stdout if res.returncode == 0 else None


def exists_via(path: Path, timeout: float = 5.0) -> bool | None:
    """``path`` exists (``stat`` by a real process); None if the stat hung."""
    try:
        res = subprocess.run(
            ["stat", "-c", "%i", "--", str(path)],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=workload_env(),
        )
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
    return [
        f"{where} {path}: holds {_show(got)}, expected " + " or ".join(_show(o) for o in options)
    ]


def absent(where: str, path: Path) -> list[str]:
    e = exists_via(path)
    if e is None:
        return [f"{where} {path}: stat hung"]
    return [f"{where} {path}: still exists"] if e else []


def _show(data: bytes, limit: int = 40) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "") + f" ({len(data)} bytes)"
