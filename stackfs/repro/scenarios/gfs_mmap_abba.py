"""Seed 004: GFS2/OCFS2 mmap + read/write, an ABBA deadlock across two nodes.

A cluster filesystem holds the target file's DLM lock (GFS2: its inode glock) for the whole of a
``read`` or ``write``; when the user buffer is an mmap of another file of the same filesystem,
the page fault takes that file's lock inside the first (``->nopage``, here ``gfs2_fault``, and
``gfs2_page_mkwrite`` for a fault for write). Node 1 does I/O on A with a mapping of B as its
buffer while node 2 does the same on B with a mapping of A: each node holds one glock and
faults for the other in a state the other's excludes: the DLM cannot grant either, and neither
node can demote while its task's syscall is in progress. No single kernel sees both halves.

The cases are the seed's "mmap(), read(), and write()": ``write`` and ``two-fs`` (a direct
write, the glock DF, the source faulted SH), ``buffered-write`` (``write(2)`` without
O_DIRECT: EX, the source faulted SH by ``fault_in_iov_iter_readable``) and ``read`` (``read(2)``
into a shared mapping: SH, the copy-out faulting the mapping for write, EX in
``gfs2_page_mkwrite``).

Real: the two tasks (``mmapio`` from or into a ``MAP_SHARED`` mapping), the kernel's chunking
(``fuse_direct_io`` pins 1 MiB at a time; a buffered write goes through in 1 MiB WRITEs; a
buffered read copies out after each readahead batch), the page faults (``filemap_fault``, a
FUSE READ carrying the task's pid, the task in D), the page-cache invalidation on demote, the
dirty pages written back at exit. Modelled: the glocks and the DLM (``backends.dlmd``), and how
long a glock is held, which follows the real syscall (``/proc/TID/syscall``, chunk coverage).
"""

from __future__ import annotations

from stackfs.repro import evidence
from stackfs.repro.context import Layer, Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import COMPLETES, DEADLOCK, Case, History, Proc, Scenario, Variant
from stackfs.repro.workload import ProcResult
from stackfs.runtime import control, lifecycle
from stackfs.runtime.service import timeout_factor

#: bytes each writer copies: four 1 MiB direct-I/O chunks, so faults come between chunks
COUNT = 4 << 20
#: each file: [0, COUNT) is written (read) by one node, [COUNT, 2*COUNT) is the other's buffer
A_SRC, B_SRC = b"A" * COUNT, b"B" * COUNT
A_OLD, B_OLD = b"a" * COUNT, b"b" * COUNT
#: forced mode: seconds a writer waits at the rendezvous for the other (times the timeout factor)
RENDEZVOUS_WAIT = 1.5
#: per case: the glock state each task's syscall holds its target in (the cycle's held edges)
HELD = {"write": "DF", "two-fs": "DF", "buffered-write": "EX", "read": "SH"}


@register
class GfsMmapAbba(Scenario):
    name = "gfs-mmap-abba"
    seed = "004"
    summary = (
        "GFS2/OCFS2: write(A) from an mmap of B on node 1, write(B) from an mmap of A "
        "on node 2: ABBA on the glocks across the cluster"
    )
    description = (
        "Stack: two nodes of a GFS2-like cluster filesystem, each its own FUSE daemon over one "
        "shared store, and a lock manager (stackfs dlmd, a service process). Node 1 runs "
        "`stackfs mmapio --write A --from B` (pwrite with O_DIRECT from a MAP_SHARED mapping "
        "of B), "
        "node 2 the mirror. The write holds A's glock DF (deferred: direct I/O, compatible "
        "with DF only) from its first 1 MiB chunk until its "
        "last (gfs2_file_direct_write); between chunks the kernel pins the next part of the "
        "buffer, faulting B's pages in (a FUSE READ with the writer's pid), and "
        "the page-in takes B's glock SH (gfs2_fault, before filemap_fault reads the page), "
        "which node 2 holds DF for its own write: each node waits for the other (buggy). "
        "Case buffered-write: write(2) without O_DIRECT holds EX "
        "(gfs2_file_buffered_write) and faults the source SH between its 1 MiB WRITEs. "
        "Case read: read(2) of A into a shared mapping of B holds A SH "
        "(gfs2_file_read_iter) while the copy-out faults B for write: SH in gfs2_fault, then "
        "EX in gfs2_page_mkwrite, which node 2's SH on B for its own read excludes. "
        "fixed-sorted walks /proc/PID/maps and takes "
        "A and B's glocks in glock order first; fixed-prefault faults the buffer in before the "
        "glock (GFS1), which narrows the window without closing it (another node's demote "
        "between the prefault and the glock evicts the pages again); fixed-nofault allows "
        "the glock to be demoted while the task faults and re-takes it at the next chunk "
        "(GFS2, Linux 5.16). Case two-fs puts A and B in two "
        "filesystems (two clusters, four mounts): the sorted walk cannot see the other "
        "filesystem's mapping and deadlocks too. Forced mode replays stored schedules "
        "(stackfs/repro/schedules, found by stackfs explore): buggy's ABBA order of each case, "
        "which the fixes meet as far as their paths go, and for fixed-prefault in write and "
        "two-fs the window it leaves (the other node's demote between the prefault and the "
        "glock); a row without one: the writers meet at the lock manager (each holds its "
        "glock before either copies on). Natural mode: they only start together."
    )
    variants = (
        Variant(
            "buggy",
            DEADLOCK,
            "2005 GFS2/OCFS2: the fault takes a glock inside the read's or write's",
            {"gfs2": "buggy"},
        ),
        Variant(
            "fixed-sorted",
            COMPLETES,
            "2005 proposal: take the buffer's glocks (from /proc/PID/maps) in sorted order "
            "first; still deadlocks across two filesystems",
            {"gfs2": "fixed-sorted"},
            per_case={"two-fs": DEADLOCK},
        ),
        Variant(
            "fixed-prefault",
            COMPLETES,
            "GFS1: fault the buffer in before the glock; narrows the window: the other "
            "node's request (DF, EX) between the prefault and the glock evicts the pages again",
            {"gfs2": "fixed-prefault"},
            # the prefault holds no glock: the other node's request for the buffer's file
            # demotes it (inode_go_inval drops the pages) before this writer's glock is
            # granted, and the copy faults under it again (why 5.16 copies with page faults
            # disabled and retries instead); docs/explore.md has the measured rates
            window=DEADLOCK,
        ),
        Variant(
            "fixed-nofault",
            COMPLETES,
            "GFS2 5.16: no faults under the glock; allow demote, fault in, retry",
            {"gfs2": "fixed-nofault"},
        ),
    )
    history = {
        "buggy": History(
            "GFS2 before 5.16 (the 2005 GFS/OCFS2 report)",
            None,
            (
                "gfs2_file_direct_write",
                "gfs2_file_buffered_write",
                "gfs2_file_read_iter",
                "gfs2_glock_nq",
                "gfs2_fault",
                "filemap_fault",
                "gfs2_page_mkwrite",
                "make_mode",
                "gdlm_bast",
                "may_grant",
            ),
            "the fault on the user buffer takes the other file's glock inside the I/O's "
            "(direct I/O DF, a buffered write EX, a buffered read SH: its glock around the "
            "copy-out is 20f829999c38's, 5.8; before that ->readpage took it per page)",
        ),
        "fixed-sorted": History(
            "2005 proposal (not merged)",
            None,
            ("gfs2_glock_nq_m", "gfs2_glock_nq"),
            "walk the buffer's mappings and take every glock in sorted order first",
        ),
        "fixed-prefault": History(
            "GFS1",
            None,
            ("fault_in_iov_iter_readable", "gfs2_glock_nq", "gfs2_fault"),
            "fault the buffer in before taking the glock: narrows the window",
        ),
        "fixed-nofault": History(
            "5.16 and later",
            "c03098d4b9ad b01b2d72da25",
            (
                "gfs2_file_direct_write",
                "pagefault_disable",
                "gfs2_holder_allow_demote",
                "fault_in_iov_iter_readable",
                "fault_in_iov_iter_writeable",
                "gfs2_glock_nq",
            ),
            "copy with page faults disabled under the glock; on a short copy allow the demote, "
            "fault the pages in (for write, under a read), retry",
        ),
    }
    cases = (
        Case("write", "A and B in one filesystem: write(A) from mmap(B) vs write(B) from mmap(A)"),
        Case(
            "two-fs",
            "A in one cluster filesystem, B in another (two lockspaces, four "
            "mounts): the same writes",
        ),
        Case(
            "buffered-write",
            "the same writes without O_DIRECT: EX on the target, the source faulted in "
            "between the 1 MiB WRITEs (generic_perform_write's fault-in under the glock)",
        ),
        Case(
            "read",
            "read(A) into a shared mmap of B vs read(B) into a shared mmap of A: SH on the "
            "target, the copy-out faults the mapping for write (gfs2_page_mkwrite: EX)",
        ),
    )
    #: above forced mode's rendezvous wait (RENDEZVOUS_WAIT s at most, only if a writer never
    #: comes), and above what a scheduled run of the read case takes on a loaded machine: the
    #: other node's task waits while one reader's page-ins, each a decision, and the demotes
    #: its faults for write cause go one by one (2.5 s: fixed-nofault's read case was reported
    #: hung in forced mode, 107 decisions, load average 9-15)
    threshold = 5.0
    timeout = 30.0

    def _node(
        self,
        run: Run,
        role: str,
        lockspace: str,
        share: Layer | None,
        files: dict[str, bytes] | None,
    ) -> Layer:
        dlm = run.services["dlm"]
        opts = [
            f"dlm={dlm.run_dir / 'dlm.sock'}",
            f"lockspace={lockspace}",
            f"node={role.split('-')[0]}",
        ]
        if run.forced:
            # the wait bounds a writer that never comes, so it follows the machine's speed
            opts += ["rendezvous=2", f"rendezvous_wait={RENDEZVOUS_WAIT * timeout_factor():g}"]
        return run.backend(
            "gfs2", role=role, variant=run.params["gfs2"], files=files, options=opts, store_of=share
        )

    def mount(self, run: Run) -> None:
        run.service("dlm", lifecycle.stackfs_argv("dlmd"))
        a = {"A": A_OLD + A_SRC}
        b = {"B": B_OLD + B_SRC}
        if run.case.name == "two-fs":
            n1 = self._node(run, "node1-fsa", "fsa", None, a)
            self._node(run, "node2-fsa", "fsa", n1, None)
            m1 = self._node(run, "node1-fsb", "fsb", None, b)
            self._node(run, "node2-fsb", "fsb", m1, None)
        else:
            n1 = self._node(run, "node1", "gfs2", None, {**a, **b})
            self._node(run, "node2", "gfs2", n1, None)
        run.note(
            "lock manager: stackfs dlmd pid "
            f"{run.services['dlm'].pid}; nodes: "
            + ", ".join(f"{r} (pid {la.mount.pid})" for r, la in run.layers.items())
        )
        if run.forced:
            run.note(
                "forced: -o rendezvous=2: at their first chunk the writers meet at the lock "
                "manager (both have faulted their first chunk in), take their glocks one "
                "after the other, then both copy on (the first goes on at once if the second "
                "is stuck behind it; the rendezvous wait at most)"
            )

    def _paths(self, run: Run, node: str, name: str):
        if run.case.name == "two-fs":
            return run.layer(f"{node}-fs{name.lower()}").mnt / name
        return run.layer(node).mnt / name

    def workload(self, run: Run) -> list[Proc]:
        go = run.dir("go")
        procs = []
        verb = "read" if run.case.name == "read" else "write"
        for node, dst, src in (("node1", "A", "B"), ("node2", "B", "A")):
            argv = [
                *lifecycle.stackfs_argv("mmapio"),
                f"--{verb}",
                self._paths(run, node, dst),
                "--from",
                self._paths(run, node, src),
                "--count",
                str(COUNT),
                "--src-offset",
                str(COUNT),
                "--go",
                go,
                "--parties",
                "2",
            ]
            if run.case.name in ("buffered-write", "read"):
                argv.append("--buffered")
            how = "into" if verb == "read" else "from"
            procs.append(Proc(argv, label=f"mmapio on {node}: {verb} {dst} {how} mmap({src})"))
        return procs

    def _store(self, run: Run, name: str):
        role = ("node1-fs" + name.lower()) if run.case.name == "two-fs" else "node1"
        store = run.layer(role).store
        assert store is not None
        return store / name

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        if run.forced:
            run.note(self._forcing(run))
        problems = []
        if run.case.name == "read":  # each read the other's first half into its second
            problems += evidence.content("store", self._store(run, "A"), [A_OLD + B_OLD])
            problems += evidence.content("store", self._store(run, "B"), [B_OLD + A_OLD])
            return problems
        problems += evidence.content("store", self._store(run, "A"), [B_SRC + A_SRC])
        problems += evidence.content("store", self._store(run, "B"), [A_SRC + B_SRC])
        return problems

    def _forcing(self, run: Run) -> str:
        """How forced mode's rendezvous went (from the lock manager): did both writers hold
        their glocks at once, or did the first go on alone (stuck second writer, timeout)?"""
        try:
            rvs = run.services["dlm"].control({"op": "state"})["dlm"]["rendezvous"]
        except (control.ControlError, KeyError, OSError) as exc:
            return f"forced mode: the lock manager did not say how the rendezvous went ({exc})"
        parts = []
        for rv in rvs:
            how = (
                "both held their glocks at once"
                if not rv["broken"]
                else "the second writer was stuck behind the first: the first went on"
                + (f" ({rv['why']})" if rv.get("why") else "")
                if rv.get("futile")
                else "timed out: a writer did not come in time"
            )
            parts.append(
                f"rendezvous {rv['name']}: entered {rv['entered']}, held {rv['held']}: " + how
            )
        return "forced mode: " + ("; ".join(parts) or "no writer reached the rendezvous")

    def evidence(self, run: Run, report: dict) -> list[str]:
        if run.forced:
            run.note(self._forcing(run))
        return (
            evidence.blocked_task(report, "mmapio")
            + evidence.cycle_present(report)
            + two_node_cycle(report, run.services["dlm"].pid, HELD[run.case.name])
        )


def two_node_cycle(report: dict, dlm_pid: int, held: str) -> list[str]:
    """The cycle runs through two tasks, each in a page fault that waits for a FUSE READ of
    its node, and two cluster-scoped glocks (each held in state ``held`` by one node's syscall,
    wanted by the other's fault); the lock manager that serves them is in the graph."""
    cycle = report.get("cycle") or {}
    nodes = {n["id"]: n for n in (report.get("graph") or {}).get("nodes", [])}
    problems = []
    tasks = {
        nodes[i]["attrs"].get("tid")
        for i in cycle.get("nodes", [])
        if nodes.get(i, {}).get("kind") == "task" and nodes[i]["attrs"].get("comm") == "mmapio"
    }
    if len(tasks) != 2:
        problems.append(f"the cycle has {len(tasks)} mmapio writers, not 2")
    glocks = [
        nodes[i]
        for i in cycle.get("nodes", [])
        if nodes.get(i, {}).get("kind") == "lock"
        and str(nodes[i]["attrs"].get("scope", "")).startswith("dlm:")
    ]
    if len(glocks) != 2:
        problems.append(f"the cycle has {len(glocks)} cluster-scoped glocks, not 2")
    edges = cycle.get("edges", [])
    faults = [e for e in edges if "page fault" in e.get("label", "")]
    if len(faults) != 2:
        problems.append("the cycle's writers do not both wait in a page fault for a FUSE READ")
    holds = [
        e
        for e in edges
        if e.get("kind") == "held_by" and (e.get("attrs") or {}).get("mode") == held
    ]
    if len(holds) != 2:
        problems.append(f"the cycle's glocks are not both held {held}")
    if f"daemon:{dlm_pid}" not in nodes:
        problems.append(f"the lock manager (pid {dlm_pid}) is not in the wait-for graph")
    return problems
