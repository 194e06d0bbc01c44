"""The watchdog's findings as kernel log records, in the kernel's own formats (for ``--kmsg``).

Harnesses such as fstests (``_check_dmesg`` in common/rc) grep ``dmesg`` after every test for
``WARNING:``, ``\\bBUG:``, ``kernel BUG at``, ``possible recursive locking detected`` and, in
syzkaller-style harnesses, ``INFO: task .* blocked for more than [0-9]+ seconds``. This module
turns a watchdog report (its JSON form, :meth:`stackfs.watchdog.report.Report.to_json`, so a
saved ``report.json`` works as well as a live report) into kernel log records, line for line as
the 6.x kernel prints them:

* the hung-task block of ``check_hung_task()`` (kernel/hung_task.c): ``INFO: task COMM:PID
  blocked for more than N seconds.``, the taint line (``print_tainted()``, release, first word of
  the version), the ``"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this
  message.`` line, ``sched_show_task()``'s ``task:... state:... stack:... pid:... tgid:...
  ppid:... task_flags:... flags:...`` line and the ``Call Trace:`` ``<TASK>`` ... ``</TASK>``
  from ``/proc/TID/stack``; then ``debug_show_blocker()``'s ``INFO: task COMM:PID <writer>
  blocked on an rw-semaphore likely owned by task COMM:PID <writer>`` where the i_rwsem holder
  is known (inferred from kernel stacks, or modelled by a testbed daemon) and, as the kernel
  does, the holder's ``sched_show_task()`` unless the holder is hung too;
* lockdep's banners (kernel/locking/lockdep.c ``print_deadlock_bug()``,
  ``print_circular_bug_header()``) for a modelled ``recursive_locking`` / ``lock_inversion``
  event or a lock cycle of the wait-for graph;
* the ``------------[ cut here ]------------`` / ``kernel BUG at`` / ``Oops:`` block of a
  modelled oops, ending with ``---[ end trace 0000000000000000 ]---``.

**How a reader tells these from the real kernel.** Every record carries a syslog identifier in
front of the kernel's text: ``stackfs[PID]: `` for what the watchdog observed on the real kernel
(hung tasks and their /proc stacks, i_rwsem holds inferred from stacks) and ``stackfs-model[PID]:
`` for what a testbed daemon's kernel model produced (modelled locks, lockdep, BUG_ON). The
fstests expressions are unanchored (``\\bBUG:`` needs only a word boundary, which ``": "``
gives), so they still match; a human sees the tag in every line; and the kernel itself stores
every record written to /dev/kmsg with the user facility (``devkmsg_write()`` forces LOG_USER when
no user facility is given), so ``dmesg -x`` shows ``user`` instead of ``kern``, and the
``tag[pid]: `` prefix is what syslog readers take as a user record's identifier. Why not
``[model]`` inside the kernel's text, or a changed banner: the lines would no longer be the
kernel's, and tools that key on the exact text (``INFO: task %s:%d blocked for more than``)
would miss them; a prefix changes nothing after it. The numbers that /proc cannot give (the
free stack of ``stack:``, the thread flags of ``flags:``) are printed as 0; a modelled lock's
key stands where lockdep prints its address; ``dump_stack()``'s ``CPU:`` and ``Hardware name:``
lines are left out of a modelled backtrace (the model runs on no CPU), its ``Call Trace:`` is
the model's call chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from stackfs.kernel.lockdep import unsafe_scenario

TAG = "stackfs"
MODEL_TAG = "stackfs-model"
LOG_USER = 1
KERN_CRIT, KERN_ERR, KERN_WARNING, KERN_INFO = 2, 3, 4, 6
#: kernel/panic.c taint_flags[] (6.18): each flag's character by bit when set; when clear a
#: space, except "G" for bit 0 (no proprietary module)
TAINT_CHARS = "PFSRMBUDAWCIOELKXTNJ"
RULE_CIRC = "=" * 54
RULE_CIRC2 = "-" * 54
RULE_REC = "=" * 44
RULE_REC2 = "-" * 44
CUT_HERE = "------------[ cut here ]------------"
END_TRACE = "---[ end trace 0000000000000000 ]---"


@dataclass
class Record:
    """One kernel log line: its level, whether the stackfs model made it, its text."""

    level: int
    text: str
    model: bool = False

    def raw(self, pid: int | None = None) -> bytes:
        """What is written to /dev/kmsg: ``<PRI>tag[pid]: text``."""
        tag = MODEL_TAG if self.model else TAG
        pri = LOG_USER * 8 + self.level
        text = f"<{pri}>{tag}[{pid or os.getpid()}]: {self.text}"[:1000]
        # the newline ends the record: without it printk keeps it open for a continuation and
        # a reader does not see it until the next record comes
        return (text + "\n").encode(errors="replace")


# -- the kernel's identity lines --------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def print_tainted(mask: int | None = None) -> str:
    """``print_tainted()``: ``Not tainted`` or ``Tainted: G        W  ...``, one char a flag."""
    if mask is None:
        text = _read("/proc/sys/kernel/tainted")
        mask = int(text) if text.isdigit() else 0
    if not mask:
        return "Not tainted"
    return "Tainted: " + "".join(
        c if mask & (1 << i) else ("G" if i == 0 else " ") for i, c in enumerate(TAINT_CHARS)
    )


def kernel_ident(tainted: str | None = None) -> tuple[str, str, str]:
    """(release, first word of the version, taint), as ``init_utsname()`` has them."""
    u = os.uname()
    return u.release, u.version.split(" ", 1)[0], tainted or print_tainted()


# -- hung tasks --------------------------------------------------------------------------------


def sched_show_task(t: dict[str, Any]) -> list[Record]:
    """``sched_show_task()`` (kernel/sched/core.c) for a task as /proc showed it."""
    state = str(t.get("state") or "?")[:1]
    running = "  running task    " if state == "R" else ""
    flags = t.get("flags") or 0
    out = [
        Record(
            KERN_INFO,
            f"task:{str(t.get('comm', '?')):<15.15} state:{state}{running} "
            f"stack:{0:<5d} pid:{int(t.get('tid') or 0):<5d} "
            f"tgid:{int(t.get('pid') or 0):<5d} ppid:{int(t.get('ppid') or 0):<6d} "
            f"task_flags:0x{int(flags):04x} flags:0x{0:08x}",
        )
    ]
    stack = [str(s) for s in t.get("stack") or []]
    if stack:
        out += [Record(KERN_INFO, "Call Trace:"), Record(KERN_INFO, " <TASK>")]
        out += [Record(KERN_INFO, f" {line.split('] ', 1)[-1]}") for line in stack]
        out.append(Record(KERN_INFO, " </TASK>"))
    return out


def _nodes(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in (report.get("graph") or {}).get("nodes") or []}


def _edges(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in (report.get("graph") or {}).get("edges") or [] if e.get("kind") != "context"]


def _is_rwsem(node: dict[str, Any]) -> bool:
    if node.get("kind") == "klock":  # inferred from stacks: always an inode's i_rwsem
        return True
    attrs = node.get("attrs") or {}
    name = (attrs.get("lock") or {}).get("name") or str(attrs.get("ident", "")).split(" ")[0]
    return node.get("kind") == "lock" and name == "i_rwsem"


def rwsem_blockers(report: dict[str, Any], tid: int) -> list[tuple[dict, dict, dict]]:
    """(the wait edge, the i_rwsem node, the held_by edge) for each known holder of an i_rwsem
    task ``tid`` waits for: directly (``down_write`` on its stack) or through the FUSE request
    whose handler the model has waiting in ``down_write``."""
    nodes, edges = _nodes(report), _edges(report)
    start = f"task:{tid}"
    waits = [e for e in edges if e["src"] == start and e["kind"] == "lock_wait"]
    for e in edges:
        if e["src"] == start and e["kind"] == "fuse_wait":
            waits += [x for x in edges if x["src"] == e["dst"] and x["kind"] == "lock_wait"]
    out = []
    for w in waits:
        lock = nodes.get(w["dst"])
        if lock is None or not _is_rwsem(lock):
            continue
        for h in edges:
            if h["src"] == w["dst"] and h["kind"] == "held_by":
                out.append((w, lock, h))
    return out


def _task_json(report: dict[str, Any], tid: int) -> dict[str, Any] | None:
    for h in list(report.get("hangs") or []) + list(report.get("also_blocked") or []):
        if (h.get("task") or {}).get("tid") == tid:
            return h["task"]
    for t in report.get("blocked") or []:
        if t.get("tid") == tid:
            return t
    node = _nodes(report).get(f"task:{tid}")
    return dict(node["attrs"]) if node else None


def hung_task(
    report: dict[str, Any], hang: dict[str, Any], ident: tuple[str, str, str], hung_tids: set[int]
) -> list[Record]:
    """``check_hung_task()`` for one hung task, then ``debug_show_blocker()``."""
    t = hang.get("task") or {}
    release, version, taint = ident
    out = [
        Record(
            KERN_ERR,
            f"INFO: task {t.get('comm')}:{t.get('tid')} blocked for more than "
            f"{int(hang.get('blocked_for') or 0)} seconds.",
        ),
        Record(KERN_ERR, f"      {taint} {release} {version}"),
        Record(
            KERN_ERR, '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.'
        ),
    ]
    out += sched_show_task(t)
    nodes = _nodes(report)
    for wait, lock, held in rwsem_blockers(report, int(t.get("tid") or 0)):
        holder = nodes.get(held["dst"], {}).get("attrs") or {}
        htid = holder.get("tid")
        as_ = "reader" if (wait.get("attrs") or {}).get("mode") == "read" else "writer"
        by = "reader" if (held.get("attrs") or {}).get("mode") == "read" else "writer"
        model = lock.get("kind") == "lock"
        out.append(
            Record(
                KERN_ERR,
                f"INFO: task {t.get('comm')}:{t.get('tid')} <{as_}> blocked "
                f"on an rw-semaphore likely owned by task "
                f"{holder.get('comm', '?')}:{htid} <{by}>",
                model,
            )
        )
        if isinstance(htid, int) and htid not in hung_tids:
            ht = _task_json(report, htid)
            if ht is not None:
                out += [Record(r.level, r.text, model) for r in sched_show_task(ht)]
        break  # the kernel knows one blocker per task
    return out


def show_all_locks(report: dict[str, Any]) -> list[Record]:
    """``debug_show_all_locks()``, which the hung-task detector calls after its reports: the
    locks each task holds, modelled (a daemon's model) or inferred (i_rwsem, from stacks)."""
    nodes = _nodes(report)
    held: dict[Any, list[Record]] = {}
    names: dict[Any, str] = {}
    for e in _edges(report):
        lock = nodes.get(e["src"]) or {}
        if e["kind"] != "held_by" or lock.get("kind") not in ("lock", "klock"):
            continue
        holder = (nodes.get(e["dst"]) or {}).get("attrs") or {}
        tid = holder.get("tid")
        attrs, ea = lock.get("attrs") or {}, e.get("attrs") or {}
        if lock["kind"] == "lock":
            name, key = _lock_parts(str(attrs.get("ident", "?")))
            at = (ea.get("chain") or ["?"])[-1]
        else:
            name = "&type->i_mutex_dir_key" if attrs.get("is_dir") else "&sb->s_type->i_mutex_key"
            key, at = str(attrs.get("path", "")), ea.get("at")
        names[tid] = f"{holder.get('comm', '?')}/{tid}"
        recs = held.setdefault(tid, [])
        text = f" #{len(recs)}: {print_lock(name, ea.get('mode'), at, key)}"
        recs.append(Record(KERN_WARNING, text, lock["kind"] == "lock"))
    if not held:
        return []
    model = all(r.model for recs in held.values() for r in recs)
    out = [
        Record(KERN_WARNING, "", model),
        Record(KERN_WARNING, "Showing all locks held in the system:", model),
    ]
    for tid, recs in held.items():
        n = len(recs)
        out.append(
            Record(
                KERN_WARNING,
                f"{n} lock{'s' if n != 1 else ''} held by {names[tid]}:",
                all(r.model for r in recs),
            )
        )
        out += recs
    out += [Record(KERN_WARNING, "", model), Record(KERN_WARNING, "=" * 45, model)]
    return out


# -- lockdep -----------------------------------------------------------------------------------


def _usage(mode: str | None) -> str:
    return "{++++}" if mode == "read" else "{+.+.}"


def print_lock(name: str, mode: str | None, at: str | None, instance: str = "") -> str:
    """lockdep's ``print_lock()``: ``INSTANCE (NAME){USAGE}-{4:4}, at: FUNC``; the modelled
    lock's key stands where the kernel prints its address."""
    return f"{instance} ({name}){_usage(mode)}-{{4:4}}, at: {at or '?'}".lstrip()


def _lock_parts(ident: str) -> tuple[str, str]:
    """``i_rwsem ino:12`` -> (``i_rwsem``, ``ino:12``)."""
    name, _, key = ident.partition(" ")
    return name, key


def recursive_locking(
    comm: str,
    pid: Any,
    lock: str,
    mode: str | None,
    at: str | None,
    held_mode: str | None,
    held_at: str | None,
    chain: list[str],
    ident: tuple[str, str, str],
    model: bool = True,
) -> list[Record]:
    """``print_deadlock_bug()`` + ``print_deadlock_scenario()`` + held locks + backtrace."""
    release, version, taint = ident
    name, key = _lock_parts(lock)
    lines = [
        "",
        RULE_REC,
        "WARNING: possible recursive locking detected",
        f"{release} {version} {taint}",
        RULE_REC2,
        f"{comm}/{pid} is trying to acquire lock:",
        print_lock(name, mode, at, key),
        "",
        "but task is already holding lock:",
        print_lock(name, held_mode, held_at, key),
        "",
        "other info that might help us debug this:",
        " Possible unsafe locking scenario:",
        "",
        "       CPU0",
        "       ----",
        f"  {'r' if held_mode == 'read' else ''}lock({name});",
        f"  {'r' if mode == 'read' else ''}lock({name});",
        "",
        " *** DEADLOCK ***",
        "",
        " May be due to missing lock nesting notation",
        "",
        f"1 lock held by {comm}/{pid}:",
        f" #0: {print_lock(name, held_mode, held_at, key)}",
        "",
        "stack backtrace:",
        "Call Trace:",
        " <TASK>",
        *(f" {fn}" for fn in reversed(chain)),
        " </TASK>",
    ]
    return [Record(KERN_WARNING, ln, model) for ln in lines]


def circular_locking(
    comm: str,
    pid: Any,
    new: tuple[str, str | None, str | None],
    held: tuple[str, str | None, str | None],
    chain: list[tuple[str, str, list[str]]],
    scenario: list[str],
    ident: tuple[str, str, str],
    model: bool = True,
) -> list[Record]:
    """``print_circular_bug_header()`` + the dependency chain + the scenario."""
    release, version, taint = ident
    lines = [
        "",
        RULE_CIRC,
        "WARNING: possible circular locking dependency detected",
        f"{release} {version} {taint}",
        RULE_CIRC2,
        f"{comm}/{pid} is trying to acquire lock:",
        print_lock(_lock_parts(new[0])[0], new[1], new[2], _lock_parts(new[0])[1]),
        "",
        "but task is already holding lock:",
        print_lock(_lock_parts(held[0])[0], held[1], held[2], _lock_parts(held[0])[1]),
        "",
        "which lock already depends on the new lock.",
        "",
        "",
        "the existing dependency chain (in reverse order) is:",
        "",
    ]
    for i, (lock, mode, frames) in enumerate(chain):
        lines.append(f"-> #{len(chain) - 1 - i} ({lock}){_usage(mode)}-{{4:4}}:")
        lines += [f"       {fn}" for fn in frames]
        lines.append("")
    lines += [
        "other info that might help us debug this:",
        "",
        *_rstrip_blank(scenario),
        "",
        " *** DEADLOCK ***",
        "",
    ]
    return [Record(KERN_WARNING, ln, model) for ln in lines]


def _rstrip_blank(lines: list[str]) -> list[str]:
    out = list(lines)
    while out and not out[-1].strip():
        out.pop()
    return out


def model_event(ev: dict[str, Any], ident: tuple[str, str, str]) -> list[Record]:
    """A testbed daemon's modelled kernel event, as the kernel prints it."""
    d = ev.get("detail") or {}
    tasks = ev.get("tasks") or [{}]
    me = tasks[0]
    kind = ev.get("type")
    if kind == "recursive_locking":
        return recursive_locking(
            me.get("comm", "?"),
            me.get("pid", "?"),
            str(d.get("lock", "?")),
            d.get("mode"),
            (d.get("chain") or ["?"])[-1],
            d.get("held_mode"),
            (d.get("held_chain") or ["?"])[-1],
            list(d.get("chain") or me.get("chain") or []),
            ident,
        )
    if kind == "lock_inversion":
        new = d.get("new") or {}
        chain = [
            (str(x.get("then", "?")), x.get("then_mode"), list(reversed(x.get("chain") or [])))
            for x in reversed(d.get("existing") or [])
        ]
        scenario = [s for s in (d.get("scenario") or []) if "DEADLOCK" not in s]
        return circular_locking(
            me.get("comm", "?"),
            me.get("pid", "?"),
            (str(new.get("then", "?")), new.get("then_mode"), (new.get("chain") or ["?"])[-1]),
            (
                str(new.get("first", "?")),
                new.get("first_mode"),
                (new.get("first_chain") or ["?"])[-1],
            ),
            chain,
            scenario,
            ident,
        )
    if kind == "oops":
        return oops(d, ev, ident)
    return [Record(KERN_WARNING, f"{kind}: {ev.get('summary', '')}", True)]


def oops(d: dict[str, Any], ev: dict[str, Any], ident: tuple[str, str, str]) -> list[Record]:
    """The BUG_ON block: cut here, ``kernel BUG at``, ``Oops:``, RIP, the call trace."""
    lines = [str(x) for x in d.get("lines") or []]
    if not lines:
        lines = [CUT_HERE, str(d.get("bug") or f"BUG: {ev.get('summary', '')}")]
    out: list[Record] = []
    in_trace = False
    for ln in lines:
        s = ln.strip()
        if s.startswith("invalid opcode:") or s.startswith("general protection fault"):
            ln = f"Oops: {s}"  # 6.x die(): "Oops: invalid opcode: 0000 [#1] ..."
        if in_trace and not ln.startswith(" "):
            out.append(Record(KERN_WARNING, " </TASK>", True))
            in_trace = False
        level = KERN_CRIT if s.startswith(("kernel BUG at", "BUG:")) else KERN_WARNING
        out.append(Record(level, ln, True))
        if s == "Call Trace:":
            out.append(Record(KERN_WARNING, " <TASK>", True))
            in_trace = True
    if in_trace:
        out.append(Record(KERN_WARNING, " </TASK>", True))
    out.append(Record(KERN_WARNING, END_TRACE, True))
    return out


def _cycle_lockdep(report: dict[str, Any], ident: tuple[str, str, str]) -> list[Record]:
    """A lock cycle of the wait-for graph that no modelled event reported already."""
    cycle = report.get("cycle") or {}
    segs = cycle.get("segments") or []
    nodes = _nodes(report)
    if cycle.get("kind") not in ("recursive_locking", "lock_inversion") or not segs:
        return []

    def lock_of(seg: dict[str, Any]) -> str:
        attrs = (nodes.get(seg.get("lock") or "") or {}).get("attrs") or {}
        return str(attrs.get("ident") or "i_rwsem " + str(attrs.get("path", "?")))

    def comm(tid: Any) -> str:
        return str(((nodes.get(f"task:{tid}") or {}).get("attrs") or {}).get("comm", "?"))

    model = any((nodes.get(s.get("lock") or "") or {}).get("kind") == "lock" for s in segs)
    s0 = segs[0]
    if cycle["kind"] == "recursive_locking":
        return recursive_locking(
            comm(s0["waiter"]),
            s0["waiter"],
            lock_of(s0),
            s0.get("wait_mode"),
            s0.get("wait_at"),
            s0.get("hold_mode"),
            s0.get("hold_at"),
            [],
            ident,
            model,
        )
    held = next((s for s in segs if s.get("holder") == s0["waiter"] and s.get("lock")), s0)
    chain = [
        (lock_of(s), s.get("hold_mode"), [s.get("hold_at") or "?"]) for s in segs if s.get("lock")
    ]
    # print_circular_lock_scenario(): source is wanted, target held, parent -> target exists
    locks = [lock_of(s) for s in segs if s.get("lock")]
    source, target = lock_of(s0), lock_of(held)
    parent = source if len(locks) == 2 else locks[-1]
    scenario = [ln for ln in unsafe_scenario(source, parent, target) if "DEADLOCK" not in ln]
    return circular_locking(
        comm(s0["waiter"]),
        s0["waiter"],
        (lock_of(s0), s0.get("wait_mode"), s0.get("wait_at")),
        (lock_of(held), held.get("hold_mode"), held.get("hold_at")),
        chain,
        scenario,
        ident,
        model,
    )


def _same_event(report: dict[str, Any], ev: dict[str, Any]) -> bool:
    cycle = report.get("cycle") or {}
    if cycle.get("kind") != ev.get("type"):
        return False
    segs = cycle.get("segments") or [{}]
    return any(t.get("pid") == segs[0].get("waiter") for t in ev.get("tasks") or [])


def render(report: dict[str, Any], tainted: str | None = None) -> list[Record]:
    """Every finding of ``report`` (a report's JSON form) as kernel log records."""
    ident = kernel_ident(tainted)
    out: list[Record] = []
    hangs = list(report.get("hangs") or [])
    hung_tids = {t for h in hangs if isinstance(t := (h.get("task") or {}).get("tid"), int)}
    for h in hangs:
        out += hung_task(report, h, ident, hung_tids)
    if hangs:
        out += show_all_locks(report)
    events = list(report.get("events") or [])
    if report.get("cycle") and not any(_same_event(report, ev) for ev in events):
        out += _cycle_lockdep(report, ident)
    for ev in events:
        out += model_event(ev, ident)
    return out
