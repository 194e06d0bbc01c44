"""The guest kernel's own hung-task detector, set up in every guest and cross-checked with the
watchdog after each run (issue 27).

In a guest the testbed owns the kernel, so it can have the kernel confirm its findings:

- :func:`sysctls`: ``kernel.hung_task_timeout_secs`` and, where the kernel has it,
  ``kernel.hung_task_check_interval_secs`` (kernel/hung_task.c, ``watchdog()`` of
  ``khungtaskd``), no limit on the number of reports (``hung_task_warnings`` -1), never a panic.
  ``check_hung_task()`` reports a task only at a check at least the timeout after the first
  check that saw it asleep (``last_switch_time``), so up to two check intervals after the
  timeout. The testbed recovers (aborts the connection) as soon as the watchdog has its verdict,
  so the kernel's timeout is the watchdog's threshold less two intervals of one second
  (:func:`kernel_timeout`): then every task the watchdog finds blocked in D past its threshold
  has been in D long enough for ``khungtaskd`` to report it first.
- :func:`parse`: the kernel's lines in the guest's dmesg: ``check_hung_task()``'s ``INFO: task
  COMM:PID blocked for more than N seconds.`` and, with ``CONFIG_DETECT_HUNG_TASK_BLOCKER``
  (6.14: mutex; 6.16: semaphore, rw-semaphore), ``debug_show_blocker()``'s ``INFO: task
  COMM:PID is blocked on a mutex likely owned by task COMM:PID.`` / ``INFO: task COMM:PID <writer>
  blocked on an rw-semaphore likely owned by task COMM:PID <reader>`` / ``... is blocked on a
  ..., but the owner is not found.``; grouped by the marker the matrix writes to ``/dev/kmsg``
  before each scenario (:data:`MARK`).
- :func:`cross_check`: one run's kernel reports (by pid, which is the kernel's task pid, the
  watchdog's ``tid``) against the watchdog's ``report.json``: the tasks it found hung in state D,
  and the i_rwsem owner it inferred from /proc stacks (:func:`stackfs.watchdog.kernfmt.
  rwsem_blockers`) against the owner the kernel names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

#: written to /dev/kmsg by the matrix's guest script before each scenario
MARK = "stackfs vm: scenario "
#: khungtaskd's check interval set in the guest (``hung_task_check_interval_secs``)
CHECK_INTERVAL = 1
#: the kernel's TASK_COMM_LEN less its NUL
COMM_LEN = 15

AGREES = "kernel agrees"
DIFFERS = "kernel differs"
NOT_ITS = "not the kernel's to see"

_TS = r"^(?:\[\s*[\d.]+\]\s*)?"
HUNG_RE = re.compile(_TS + r"INFO: task (?P<comm>.*):(?P<pid>\d+) blocked for more than (?P<s>\d+)")
BLOCKER_RE = re.compile(
    _TS + r"INFO: task (?P<comm>.*):(?P<pid>\d+)(?: <(?P<as>\w+)>)? (?:is )?blocked on an? "
    r"(?P<lock>mutex|rw-semaphore|semaphore)(?:(?:,)? but the owner is not found"
    r"| likely (?:owned|last held) by task (?P<ocomm>.*):(?P<opid>\d+))"
)


def kernel_timeout(threshold: float, interval: int = CHECK_INTERVAL) -> int:
    """``hung_task_timeout_secs`` for a watchdog ``threshold`` (see the module docstring)."""
    return max(1, math.floor(threshold + 1e-9) - 2 * interval)


def sysctls(timeout: int, interval: int = CHECK_INTERVAL) -> dict[str, str]:
    """/proc/sys/kernel files -> value for ``khungtaskd`` (the interval only where present)."""
    return {
        "hung_task_timeout_secs": str(timeout),
        "hung_task_check_interval_secs": str(interval),
        "hung_task_warnings": "-1",
        "hung_task_panic": "0",
    }


@dataclass
class KernelReport:
    """One task ``khungtaskd`` reported, with the owner ``debug_show_blocker()`` named."""

    pid: int
    comm: str
    seconds: int
    lines: list[str] = field(default_factory=list)
    lock: str | None = None  # mutex, rw-semaphore, semaphore (the blocker line)
    owner_pid: int | None = None
    owner_comm: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse(dmesg: str) -> dict[str, list[KernelReport]]:
    """The kernel's hung-task reports in a guest's dmesg, per scenario (the text after each
    :data:`MARK`; ``""`` before the first)."""
    out: dict[str, list[KernelReport]] = {"": []}
    section = ""
    by_pid: dict[int, KernelReport] = {}
    for raw in dmesg.splitlines():
        line = raw.rstrip()
        if MARK in line:
            section = line.split(MARK, 1)[1].split()[0]
            out.setdefault(section, [])
            by_pid = {}
            continue
        if m := HUNG_RE.search(line):
            # reported again at each check while it stays blocked: one report, its lines
            r = by_pid.get(int(m["pid"])) or KernelReport(int(m["pid"]), m["comm"], 0)
            if r.pid not in by_pid:
                out[section].append(r)
                by_pid[r.pid] = r
            r.seconds = max(r.seconds, int(m["s"]))
            r.lines.append(line)
        elif m := BLOCKER_RE.search(line):
            r = by_pid.get(int(m["pid"])) or KernelReport(int(m["pid"]), m["comm"], 0)
            if r.pid not in by_pid:
                out[section].append(r)
                by_pid[r.pid] = r
            if line not in r.lines:
                r.lines.append(line)
            r.lock = m["lock"]
            if m["opid"]:
                r.owner_pid, r.owner_comm = int(m["opid"]), m["ocomm"]
    return out


def _task_ids(report: dict[str, Any] | None, result: dict[str, Any]) -> set[int]:
    """Every task id a run knows: its workload's processes, the tasks of the watchdog's report."""
    ids = {int(p["pid"]) for p in result.get("processes") or [] if p.get("pid")}
    if report:
        for t in report.get("blocked") or []:
            ids.add(int(t.get("tid") or 0))
        for h in list(report.get("hangs") or []) + list(report.get("also_blocked") or []):
            ids.add(int((h.get("task") or {}).get("tid") or 0))
        for n in (report.get("graph") or {}).get("nodes") or []:
            if str(n.get("id", "")).startswith("task:"):
                ids.add(int(n["id"].split(":", 1)[1]))
    return ids - {0}


def _who(t: dict[str, Any]) -> str:
    return f"{t.get('comm')}:{t.get('tid')}"


#: callers of a page fault that ask for a killable one, so ``filemap_fault()`` waits for the
#: folio in ``__folio_lock_killable()`` (a tail call: no frame of its own):
#: ``do_user_addr_fault()`` (x86; FAULT_FLAG_DEFAULT has FAULT_FLAG_KILLABLE) and GUP with
#: ``locked`` (``faultin_page()`` sets FAULT_FLAG_KILLABLE): ``get_user_pages_unlocked()``
#: (6.1), ``gup_fast_fallback()`` (6.12+: FOLL_UNLOCKABLE)
KILLABLE_FAULTS = ("do_user_addr_fault", "get_user_pages_unlocked", "gup_fast_fallback")


def killable(task: dict[str, Any]) -> str | None:
    """Why a task /proc shows in state D sleeps TASK_KILLABLE, which ``khungtaskd`` skips
    (``check_hung_uninterruptible_tasks()`` looks at TASK_UNINTERRUPTIBLE without
    TASK_WAKEKILL or TASK_NOLOAD; /proc prints D for all three), where its stack shows it:
    a ``*_killable`` frame, or ``filemap_fault()`` under one of :data:`KILLABLE_FAULTS`.
    None otherwise."""
    frames = [str(f).split("+", 1)[0] for f in task.get("stack") or []]
    for f in frames:
        if f.endswith("_killable"):
            return f"in {f}"
    if "filemap_fault" in frames:
        for caller in KILLABLE_FAULTS:
            if caller in frames:
                return f"in filemap_fault under {caller}: FAULT_FLAG_KILLABLE"
    if frames[:2] == ["folio_wait_bit_common", "filemap_get_pages"]:
        # filemap_update_page() (inlined): folio_put_wait_locked(folio, TASK_KILLABLE)
        return "in filemap_get_pages: filemap_update_page waits TASK_KILLABLE"
    return None


@dataclass
class Check:
    """The kernel's word on one run: :data:`AGREES`, :data:`DIFFERS` or :data:`NOT_ITS`."""

    verdict: str
    why: str
    reports: list[KernelReport]

    @property
    def text(self) -> str:
        return f"{self.verdict}: {self.why}" if self.why else self.verdict

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "why": self.why,
            "reports": [r.to_json() for r in self.reports],
        }

    def render(self) -> list[str]:
        """The report text's section: the kernel's lines quoted under their own heading."""
        out = ["", "The kernel's own hung-task detector (khungtaskd, the guest's dmesg):"]
        lines = [ln for r in self.reports for ln in r.lines]
        out += [f"  | {ln}" for ln in lines] or ["  (no report for this run's tasks)"]
        return out + [f"  cross-check: {self.text}"]


def owners(report: dict[str, Any], tid: int) -> list[tuple[int, str, bool]]:
    """(owner tid, comm, inferred from kernel stacks) of the i_rwsem ``tid`` waits for, as the
    watchdog has them (:func:`stackfs.watchdog.kernfmt.rwsem_blockers`, the same owner its
    ``--kmsg`` blocker line names; a modelled lock is a daemon's, which the kernel cannot see)."""
    from stackfs.watchdog import findings
    from stackfs.watchdog.kernfmt import rwsem_blockers

    f = findings.parse(report)
    out = []
    for _wait, lock, held in rwsem_blockers(f, tid):
        holder = f.nodes.get(held.dst)
        if holder is not None and holder.attrs.tid is not None:
            out.append((holder.attrs.tid, holder.attrs.comm or "?", lock.kind == "klock"))
    return out


def cross_check(
    result: dict[str, Any],
    report: dict[str, Any] | None,
    kreports: list[KernelReport],
    *,
    blocker: bool,
    timeout: int,
) -> Check:
    """One run: the kernel's reports (of this run's tasks: by pid) against the watchdog's.
    ``blocker``: the kernel has ``CONFIG_DETECT_HUNG_TASK_BLOCKER`` (compare owners)."""
    ids = _task_ids(report, result)
    mine = [k for k in kreports if k.pid in ids]
    hangs = [h.get("task") or {} for h in (report or {}).get("hangs") or []]
    in_d = {int(t["tid"]): t for t in hangs if str(t.get("state") or "")[:1] == "D"}
    in_s = [t for t in hangs if str(t.get("state") or "")[:1] != "D"]
    seen_d = set(in_d) | {
        int(t.get("tid") or 0)
        for t in (report or {}).get("blocked") or []
        if str(t.get("state") or "")[:1] == "D"
    }
    kpids = {k.pid for k in mine if k.seconds}
    diffs = []
    missed = [t for tid, t in in_d.items() if tid not in kpids]
    skipped = [(t, why) for t in missed if (why := killable(t))]
    missed = [t for t in missed if not killable(t)]
    if missed:
        diffs.append("not reported by the kernel: " + ", ".join(map(_who, missed)))
    extra = [k for k in mine if k.seconds and k.pid not in seen_d]
    if extra:
        diffs.append(
            f"reported by the kernel (> {timeout} s in D), not by the watchdog: "
            + ", ".join(f"{k.comm}:{k.pid}" for k in extra)
        )
    checked = []
    if blocker and report:
        for tid in sorted(set(in_d) & kpids):
            k = next(k for k in mine if k.pid == tid)
            wd = owners(report, tid)
            wd_tids = {o[0] for o in wd}
            if k.owner_pid is not None:
                if k.owner_pid in wd_tids:
                    checked.append(f"owner of {k.comm}:{tid} {k.owner_comm}:{k.owner_pid}")
                else:
                    names = ", ".join(f"{c}:{t}" for t, c, _ in wd) or "none"
                    diffs.append(
                        f"{k.comm}:{tid}: the kernel names owner {k.owner_comm}:{k.owner_pid}, "
                        f"the watchdog {names}"
                    )
            elif any(real for _t, _c, real in wd):
                names = ", ".join(f"{c}:{t}" for t, c, real in wd if real)
                diffs.append(f"{k.comm}:{tid}: the kernel names no owner, the watchdog {names}")
    if diffs:
        return Check(DIFFERS, "; ".join(diffs), mine)
    seen = [t for tid, t in in_d.items() if tid in kpids]
    if skipped and not seen:
        return Check(
            NOT_ITS,
            "; ".join(f"{_who(t)} sleeps killable ({why})" for t, why in skipped)
            + ": D in /proc, but khungtaskd skips TASK_KILLABLE",
            mine,
        )
    if in_d:
        who = ", ".join(map(_who, seen))
        how = "; " + ", ".join(checked) if checked else ""
        if not blocker:
            how += " (no CONFIG_DETECT_HUNG_TASK_BLOCKER: owners not named)"
        if skipped:
            how += "; killable, not the kernel's to see: " + ", ".join(_who(t) for t, _ in skipped)
        return Check(AGREES, f"{who} in D{how}", mine)
    if in_s:
        return Check(
            NOT_ITS,
            "the hang is in interruptible FUSE waits (state S: "
            + ", ".join(map(_who, in_s))
            + "); the detector looks at state D only",
            mine,
        )
    events = [
        str(e.get("type") or e.get("kind") or "?") for e in (report or {}).get("events") or []
    ]
    if events:
        return Check(NOT_ITS, f"a modelled kernel event ({', '.join(sorted(set(events)))})", mine)
    return Check(AGREES, "no task in D past the threshold, none reported", mine)
