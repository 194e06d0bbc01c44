"""The watchdog's findings as kernel log records, in the kernel's own formats (for ``--kmsg``).

Harnesses such as fstests (``_check_dmesg`` in common/rc) grep ``dmesg`` after every test for
``WARNING:``, ``\\bBUG:``, ``kernel BUG at``, ``possible recursive locking detected`` and, in
syzkaller-style harnesses, ``INFO: task .* blocked for more than [0-9]+ seconds``. This module
turns a watchdog report (its findings, typed once by :func:`stackfs.watchdog.findings.parse`
from the JSON form, :meth:`stackfs.watchdog.report.Report.findings`, so a saved ``report.json``
renders as the live report does) into kernel log records, line for line as the 6.x kernel
prints them:

* the hung-task block of ``check_hung_task()`` (kernel/hung_task.c) for a task in state D:
  ``INFO: task COMM:PID blocked for more than N seconds.``, the taint line (``print_tainted()``,
  release, first word of the version), ``sched_show_task()``'s ``task:... state:... stack:...
  pid:... tgid:... ppid:... task_flags:... flags:...`` line and the ``Call Trace:`` ``<TASK>``
  ... ``</TASK>`` from ``/proc/TID/stack``; then ``debug_show_blocker()``'s ``INFO: task
  COMM:PID <writer> blocked on an rw-semaphore likely owned by task COMM:PID <writer>`` where
  the i_rwsem holder is known (inferred from kernel stacks, or modelled by a testbed daemon)
  and, as the kernel does, the holder's ``sched_show_task()`` unless the holder is hung too.
  The kernel's line about ``/proc/sys/kernel/hung_task_timeout_secs`` is left out: that knob
  does not govern the watchdog (``--threshold`` does);
* a task asleep in state S in a FUSE wait (``request_wait_answer()`` waits interruptibly
  first: seen on this machine's 6.18, ``/proc/TID/stat`` state S with ``request_wait_answer``
  on top of its stack) in a block of its own, ``task COMM:PID blocked in an interruptible FUSE
  wait ...``: the testbed's finding, not the hung-task format (the kernel's detector looks at
  TASK_UNINTERRUPTIBLE tasks only), then ``sched_show_task()`` as ``sysrq-w`` shows a task;
* lockdep's banners (kernel/locking/lockdep.c ``print_deadlock_bug()``,
  ``print_circular_bug_header()``) for a modelled ``recursive_locking`` / ``lock_inversion``
  event or a lock cycle of the wait-for graph;
* the ``------------[ cut here ]------------`` / ``kernel BUG at`` / ``Oops:`` block of a
  modelled oops, ending with ``---[ end trace 0000000000000000 ]---``. A model that declares
  the release it stands for (the event's ``release``: seed 003's NFS model is 4.7-rc1) keeps
  that release's lines and frames as the model wrote them (``invalid opcode: ...`` without
  6.x's ``Oops:`` prefix, no ``<TASK>`` markers, ``sys_open`` /
  ``entry_SYSCALL_64_fastpath``) and names the release in the ``PID: ... Comm: ...`` line;
  lockdep banners of such a model name it where the kernel prints its own release.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stackfs.kernel.lockdep import unsafe_scenario
from stackfs.kernel.snapshot import DependencySnap, EventSnap, EventTask
from stackfs.watchdog import findings
from stackfs.watchdog.findings import Findings, HangFinding, ProcTask
from stackfs.watchdog.graph import Edge, Node, Segment
from stackfs.watchdog.graphattrs import NodeAttrs

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


def model_ident(ev: EventSnap, ident: tuple[str, str, str]) -> tuple[str, str, str]:
    """The identity a modelled event prints: the release its model stands for (the event's
    ``release``, e.g. ``4.7-rc1``), said to be modelled and with no taint (the modelled kernel
    has none to read); the running kernel's ``ident`` when the model declares no release."""
    return (ev.release, "(modelled)", "") if ev.release else ident


def uts_line(ident: tuple[str, str, str]) -> str:
    """lockdep's ``%s %.*s %s`` line: release, version, taint."""
    return " ".join(part for part in ident if part)


# -- hung tasks --------------------------------------------------------------------------------


def sched_show_task(t: ProcTask) -> list[Record]:
    """``sched_show_task()`` (kernel/sched/core.c) for a task as /proc showed it."""
    state = (t.state or "?")[:1]
    running = "  running task    " if state == "R" else ""
    out = [
        Record(
            KERN_INFO,
            f"task:{t.comm or '?':<15.15} state:{state}{running} "
            f"stack:{0:<5d} pid:{t.tid or 0:<5d} "
            f"tgid:{t.pid or 0:<5d} ppid:{t.ppid or 0:<6d} "
            f"task_flags:0x{t.flags or 0:04x} flags:0x{0:08x}",
        )
    ]
    if t.stack:
        out += [Record(KERN_INFO, "Call Trace:"), Record(KERN_INFO, " <TASK>")]
        out += [Record(KERN_INFO, f" {line.split('] ', 1)[-1]}") for line in t.stack]
        out.append(Record(KERN_INFO, " </TASK>"))
    return out


def _is_rwsem(node: Node) -> bool:
    if node.kind == "klock":  # inferred from stacks: always an inode's i_rwsem
        return True
    a = node.attrs
    name = a.lock.name if a.lock is not None else (a.ident or "").split(" ")[0]
    return node.kind == "lock" and name == "i_rwsem"


def rwsem_blockers(report: Findings, tid: int) -> list[tuple[Edge, Node, Edge]]:
    """(the wait edge, the i_rwsem node, the held_by edge) for each known holder of an i_rwsem
    task ``tid`` waits for: directly (``down_write`` on its stack) or through the FUSE request
    whose handler the model has waiting in ``down_write``."""
    edges = report.edges
    start = f"task:{tid}"
    waits = [e for e in edges if e.src == start and e.kind == "lock_wait"]
    for e in edges:
        if e.src == start and e.kind == "fuse_wait":
            waits += [x for x in edges if x.src == e.dst and x.kind == "lock_wait"]
    out = []
    for w in waits:
        lock = report.nodes.get(w.dst)
        if lock is None or not _is_rwsem(lock):
            continue
        for h in edges:
            if h.src == w.dst and h.kind == "held_by":
                out.append((w, lock, h))
    return out


def _attrs(report: Findings, nid: str | None) -> NodeAttrs:
    """The attributes of node ``nid`` (none when the report has no such node)."""
    node = report.nodes.get(nid or "")
    return node.attrs if node is not None else NodeAttrs()


def hung_task(
    report: Findings, hang: HangFinding, ident: tuple[str, str, str], hung_tids: set[int]
) -> list[Record]:
    """``check_hung_task()`` for one hung task, then ``debug_show_blocker()``."""
    t = hang.task
    release, version, taint = ident
    out = [
        Record(
            KERN_ERR,
            f"INFO: task {t.comm}:{t.tid} blocked for more than {int(hang.blocked_for)} seconds.",
        ),
        Record(KERN_ERR, f"      {taint} {release} {version}"),
    ]
    return out + sched_show_task(t) + show_blocker(report, t, hung_tids)


def show_blocker(
    report: Findings, t: ProcTask, hung_tids: set[int], hung: bool = True
) -> list[Record]:
    """``debug_show_blocker()``: the likely owner of the i_rwsem task ``t`` waits for, and the
    owner as ``sched_show_task()`` shows it unless it is hung too. For a task that is not hung
    (``hung`` false: asleep in an interruptible FUSE wait whose handler waits for the lock) the
    same facts in the testbed's words, without the kernel's ``INFO:``."""
    out: list[Record] = []
    for wait, lock, held in rwsem_blockers(report, t.tid or 0):
        holder = _attrs(report, held.dst)
        htid = holder.tid
        as_ = "reader" if wait.attrs.mode == "read" else "writer"
        by = "reader" if held.attrs.mode == "read" else "writer"
        model = lock.kind == "lock"
        owner = f"an rw-semaphore likely owned by task {holder.comm or '?'}:{htid} <{by}>"
        me = f"task {t.comm}:{t.tid} <{as_}>"
        text = (
            f"INFO: {me} blocked on {owner}"
            if hung
            else f"{me} waits, through its FUSE request, on {owner}"
        )
        out.append(Record(KERN_ERR if hung else KERN_WARNING, text, model))
        if htid is not None and htid not in hung_tids:
            ht = report.task(htid)
            if ht is not None:
                out += [Record(r.level, r.text, model) for r in sched_show_task(ht)]
        break  # the kernel knows one blocker per task
    return out


def is_hung_state(task: ProcTask) -> bool:
    """Whether the kernel's hung-task detector would look at the task: state D
    (``check_hung_uninterruptible_tasks()`` skips every other state)."""
    return (task.state or "")[:1] == "D"


def interruptible_wait(report: Findings, hang: HangFinding, hung_tids: set[int]) -> list[Record]:
    """A task asleep in state S in a FUSE wait past the threshold: the testbed's finding, in a
    block of its own (no ``INFO: task ... blocked for more than``: the kernel never says that of
    an S task), then the task as ``sched_show_task()`` prints it."""
    t = hang.task
    head = Record(
        KERN_WARNING,
        f"task {t.comm}:{t.tid} blocked in an interruptible FUSE wait for "
        f"{int(hang.blocked_for)} seconds (state {(t.state or '?')[:1]}: "
        "the kernel's hung-task detector reports state D only)",
    )
    return [head, *sched_show_task(t), *show_blocker(report, t, hung_tids, hung=False)]


def blocked_task(
    report: Findings, hang: HangFinding, ident: tuple[str, str, str], hung_tids: set[int]
) -> list[Record]:
    """The block of one task blocked past the threshold: the hung-task block for state D,
    :func:`interruptible_wait` otherwise."""
    if is_hung_state(hang.task):
        return hung_task(report, hang, ident, hung_tids)
    return interruptible_wait(report, hang, hung_tids)


def lock_class(is_dir: bool | None) -> str:
    """The lockdep class of an inode's i_rwsem (``lockdep_annotate_inode_mutex_key``)."""
    return "&type->i_mutex_dir_key" if is_dir else "&sb->s_type->i_mutex_key"


def show_all_locks(report: Findings) -> list[Record]:
    """``debug_show_all_locks()``, which the hung-task detector calls after its reports: the
    locks each task holds, modelled (a daemon's model) or inferred (i_rwsem, from stacks)."""
    held: dict[int | None, list[Record]] = {}
    names: dict[int | None, str] = {}
    seen: set[tuple[int | None, str]] = set()
    for e in report.edges:
        lock = report.nodes.get(e.src)
        if e.kind != "held_by" or lock is None or lock.kind not in ("lock", "klock"):
            continue
        holder = _attrs(report, e.dst)
        tid = holder.tid
        attrs, ea = lock.attrs, e.attrs
        at: str | None
        if lock.kind == "lock":
            name, key = _lock_parts(attrs.ident or "?")
            at = ea.chain[-1] if ea.chain else "?"
        else:
            name = lock_class(attrs.is_dir)
            key, at = attrs.path or "", ea.at
        names[tid] = f"{holder.comm or '?'}/{tid}"
        recs = held.setdefault(tid, [])
        text = f" #{len(recs)}: {print_lock(name, ea.mode, at, key)}"
        recs.append(Record(KERN_WARNING, text, lock.kind == "lock"))
        seen.add((tid, f"{name} {key}"))
    # every other modelled lock a daemon's state says is held (not only those on the graph)
    for mlock in report.locks:
        for h in mlock.holders:
            if h.task is None or h.pid is None or (h.pid, mlock.ident) in seen:
                continue
            seen.add((h.pid, mlock.ident))
            names[h.pid] = h.task.name()
            recs = held.setdefault(h.pid, [])
            at = h.chain[-1] if h.chain else "?"
            text = f" #{len(recs)}: {print_lock(mlock.name, h.mode, at, mlock.key)}"
            recs.append(Record(KERN_WARNING, text, True))
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
    name, key = _lock_parts(lock)
    lines = [
        "",
        RULE_REC,
        "WARNING: possible recursive locking detected",
        uts_line(ident),
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
    chain: list[tuple[str, str | None, list[str]]],
    scenario: list[str],
    ident: tuple[str, str, str],
    model: bool = True,
) -> list[Record]:
    """``print_circular_bug_header()`` + the dependency chain + the scenario."""
    lines = [
        "",
        RULE_CIRC,
        "WARNING: possible circular locking dependency detected",
        uts_line(ident),
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


def _last(chain: tuple[str, ...]) -> str:
    """The innermost function of a model call chain (``?`` for none)."""
    return chain[-1] if chain else "?"


def model_event(ev: EventSnap, ident: tuple[str, str, str]) -> list[Record]:
    """A testbed daemon's modelled kernel event, as the kernel (of the release the model stands
    for, :func:`model_ident`) prints it."""
    ident = model_ident(ev, ident)
    d = ev.detail
    me = ev.tasks[0] if ev.tasks else EventTask(None, None, ())
    comm, pid = me.comm or "?", me.pid if me.pid is not None else "?"
    if ev.type == "recursive_locking":
        return recursive_locking(
            comm,
            pid,
            d.lock or "?",
            d.mode,
            _last(d.chain),
            d.held_mode,
            _last(d.held_chain),
            list(d.chain or me.chain),
            ident,
        )
    if ev.type == "lock_inversion":
        new = d.new or DependencySnap.parse({})
        chain = [
            (x.then or "?", x.then_mode, list(reversed(x.chain))) for x in reversed(d.existing)
        ]
        scenario = [s for s in d.scenario if "DEADLOCK" not in s]
        return circular_locking(
            comm,
            pid,
            (new.then or "?", new.then_mode, _last(new.chain)),
            (new.first or "?", new.first_mode, _last(new.first_chain)),
            chain,
            scenario,
            ident,
        )
    if ev.type == "oops":
        return oops(ev, ident)
    return [Record(KERN_WARNING, f"{ev.type}: {ev.summary or ''}", True)]


def oops(ev: EventSnap, ident: tuple[str, str, str]) -> list[Record]:
    """The BUG_ON block: cut here, ``kernel BUG at``, ``Oops:``, RIP, the call trace; for a
    model of a declared release (``ev.release``) its lines and frames as that release
    printed them, the release named in the ``PID: ... Comm: ...`` line."""
    lines = list(ev.detail.lines)
    if not lines:
        lines = [CUT_HERE, ev.detail.bug or f"BUG: {ev.summary or ''}"]
    if ev.release:
        release = uts_line(model_ident(ev, ident))
        out = [
            Record(
                KERN_CRIT if ln.strip().startswith(("kernel BUG at", "BUG:")) else KERN_WARNING,
                f"{ln} {release}" if ln.startswith("PID: ") and " Comm: " in ln else ln,
                True,
            )
            for ln in lines
        ]
        return [*out, Record(KERN_WARNING, END_TRACE, True)]
    out = []
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


def cycle_lockdep(report: Findings, ident: tuple[str, str, str]) -> list[Record]:
    """A lock cycle of the wait-for graph that no modelled event reported already."""
    cycle = report.cycle
    if cycle is None or cycle.kind not in ("recursive_locking", "lock_inversion"):
        return []
    segs = cycle.segments
    if not segs:
        return []

    def lock_of(seg: Segment) -> str:
        attrs = _attrs(report, seg.lock)
        return attrs.ident or "i_rwsem " + (attrs.path or "?")

    def comm(tid: int) -> str:
        return _attrs(report, f"task:{tid}").comm or "?"

    model = any(
        (node := report.nodes.get(s.lock or "")) is not None and node.kind == "lock" for s in segs
    )
    s0 = segs[0]
    if cycle.kind == "recursive_locking":
        return recursive_locking(
            comm(s0.waiter),
            s0.waiter,
            lock_of(s0),
            s0.wait_mode,
            s0.wait_at,
            s0.hold_mode,
            s0.hold_at,
            [],
            ident,
            model,
        )
    held = next((s for s in segs if s.holder == s0.waiter and s.lock), s0)
    chain = [(lock_of(s), s.hold_mode, [s.hold_at or "?"]) for s in segs if s.lock]
    # print_circular_lock_scenario(): source is wanted, target held, parent -> target exists
    locks = [lock_of(s) for s in segs if s.lock]
    source, target = lock_of(s0), lock_of(held)
    parent = source if len(locks) == 2 else locks[-1]
    scenario = [ln for ln in unsafe_scenario(source, parent, target) if "DEADLOCK" not in ln]
    return circular_locking(
        comm(s0.waiter),
        s0.waiter,
        (lock_of(s0), s0.wait_mode, s0.wait_at),
        (lock_of(held), held.hold_mode, held.hold_at),
        chain,
        scenario,
        ident,
        model,
    )


def _same_event(report: Findings, ev: EventSnap) -> bool:
    cycle = report.cycle
    if cycle is None or cycle.kind != ev.type or not cycle.segments:
        return False
    return any(t.pid == cycle.segments[0].waiter for t in ev.tasks)


def render(report: Findings | Mapping[str, Any], tainted: str | None = None) -> list[Record]:
    """Every finding of ``report`` (typed, or a report's JSON form: a live report's
    :meth:`~stackfs.watchdog.report.Report.findings` or a saved ``report.json``) as kernel
    log records."""
    f = report if isinstance(report, Findings) else findings.parse(report)
    ident = kernel_ident(tainted)
    out: list[Record] = []
    hung_tids = {t for h in f.hangs if (t := h.task.tid) is not None}
    for h in f.hangs:
        out += blocked_task(f, h, ident, hung_tids)
    if f.hangs:
        out += show_all_locks(f)
    if f.cycle is not None and not any(_same_event(f, ev) for ev in f.events):
        out += cycle_lockdep(f, ident)
    for ev in f.events:
        out += model_event(ev, ident)
    return out
