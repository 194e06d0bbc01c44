"""Seed 004: GFS2/OCFS2 mmap + read/write, an ABBA deadlock across two nodes.

A cluster filesystem holds the target file's DLM lock (GFS2: its inode glock) for the whole of a
``write``; when the user buffer is an mmap of another file of the same filesystem, the page fault
takes that file's lock inside the first (``->nopage``, here ``gfs2_fault``). Node 1 writes A from
a mapping of B while node 2 writes B from a mapping of A: each node holds one glock EX and
faults for the other: the DLM cannot grant either, and neither node can demote while its
writer's syscall is in progress. No single kernel sees both halves.

Real: the two writers (``mmapio``: ``pwrite(O_DIRECT)`` from a ``MAP_SHARED`` mapping), the
kernel's direct-I/O chunking (``fuse_direct_io`` pins 1 MiB at a time), the page faults
(``filemap_fault``, a FUSE READ carrying the writer's pid, the writer in D), the page-cache
invalidation on demote. Modelled: the glocks and the DLM (``stackfs.dlmd``), and how long a
glock is held, which follows the real syscall (``/proc/TID/syscall``, chunk coverage).
"""

from __future__ import annotations

from stackfs import control, lifecycle
from stackfs.repro import evidence
from stackfs.repro.context import Layer, Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import COMPLETES, DEADLOCK, Case, Proc, Scenario, Variant
from stackfs.repro.workload import ProcResult
from stackfs.service import timeout_factor

#: bytes each writer copies: four 1 MiB direct-I/O chunks, so faults come between chunks
COUNT = 4 << 20
#: each file: [0, COUNT) is written by one node, [COUNT, 2*COUNT) is the other's source
A_SRC, B_SRC = b"A" * COUNT, b"B" * COUNT
A_OLD, B_OLD = b"a" * COUNT, b"b" * COUNT
#: forced mode: seconds a writer waits at the rendezvous for the other (times the timeout factor)
RENDEZVOUS_WAIT = 1.5


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
        "node 2 the mirror. The write holds A's glock EX from its first 1 MiB chunk until its "
        "last (gfs2_file_write_iter); between chunks the kernel pins the next part of the "
        "buffer, faulting B's pages in (filemap_fault -> FUSE READ with the writer's pid), and "
        "the page-in takes B's glock PR (gfs2_fault), which node 2 holds EX for its own write: "
        "each node waits for the other (buggy). fixed-sorted walks /proc/PID/maps and takes "
        "A and B's glocks in glock order first; fixed-prefault faults the buffer in before the "
        "glock (GFS1), which narrows the window without closing it (another node's demote "
        "between the prefault and the glock evicts the pages again); fixed-nofault allows "
        "the glock to be demoted while the task faults and re-takes it at the next chunk "
        "(GFS2, Linux 5.16). Case two-fs puts A and B in two "
        "filesystems (two clusters, four mounts): the sorted walk cannot see the other "
        "filesystem's mapping and deadlocks too. Forced mode: the writers meet at the lock "
        "manager (each holds its glock before either copies on); natural mode: they only "
        "start together."
    )
    variants = (
        Variant(
            "buggy",
            DEADLOCK,
            "2005 GFS2/OCFS2: the fault takes a glock inside the write's",
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
            "node's EX between the prefault and the glock evicts the pages again",
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
    cases = (
        Case("write", "A and B in one filesystem: write(A) from mmap(B) vs write(B) from mmap(A)"),
        Case(
            "two-fs",
            "A in one cluster filesystem, B in another (two lockspaces, four "
            "mounts): the same writes",
        ),
    )
    #: forced mode's rendezvous waits RENDEZVOUS_WAIT s at most (only if a writer never comes)
    threshold = 2.5
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
        for node, dst, src in (("node1", "A", "B"), ("node2", "B", "A")):
            argv = [
                *lifecycle.stackfs_argv("mmapio"),
                "--write",
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
            procs.append(Proc(argv, label=f"mmapio on {node}: write {dst} from mmap({src})"))
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
            + two_node_cycle(report, run.services["dlm"].pid)
        )


def two_node_cycle(report: dict, dlm_pid: int) -> list[str]:
    """The cycle runs through two writers, each in a page fault that waits for a FUSE READ of
    its node, and two cluster-scoped glocks (held EX on one node, wanted PR on the other); the
    lock manager that serves them is in the graph."""
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
    held = [e for e in edges if e.get("kind") == "held_by" and "EX" in e.get("label", "")]
    if len(held) != 2:
        problems.append("the cycle's glocks are not both held EX")
    if f"daemon:{dlm_pid}" not in nodes:
        problems.append(f"the lock manager (pid {dlm_pid}) is not in the wait-for graph")
    return problems
