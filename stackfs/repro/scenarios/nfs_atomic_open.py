"""Seed 003: parallel nfs_atomic_open / d_splice_alias on one name (Linux 4.7-rc1).

Openers of a name whose negative dentry is cached go to ``nfs_atomic_open``; when the OPEN by
name fails with anything but ENOENT (another client made the name a directory: EISDIR), 4.7-rc1
did not ``d_drop`` the dentry, fell back to ``nfs_lookup`` and reached ``d_splice_alias`` with
the dentry still hashed: ``BUG_ON(!d_unhashed(dentry))``. The kernel sends same-name LOOKUPs in
parallel when it holds a positive dentry and entry_timeout is 0 (shared/NOTES.md), so three
real processes race in the NFS backend's model of the dentry cache.

The ``fixed`` variant (4.7-rc3: ``d_drop`` on every open_context error, Al Viro's patch of
"Re: NFS/d_splice_alias breakage", LKML, 3 June 2016) *narrows the window*, it does not close
it: in 4.7's ``do_last`` an open without O_CREAT takes the directory's i_rwsem shared, and
``lookup_open`` hands a hashed negative dentry that ``d_revalidate`` accepted to
``atomic_open`` (only a missing one goes through ``d_alloc_parallel``), so two openers can hold
the same dentry in ``nfs_atomic_open``, both ``d_drop`` it, both reach ``nfs_lookup`` (a LOOKUP
round trip), and the second ``d_splice_alias`` finds it hashed: seed 003, Oleg Drokin's report of
17 June 2016 against that very code. Upstream closed it with c94c0953 ("nfs_atomic_open():
prevent parallel nfs_lookup() on a negative hashed", the ``parallel-lookup`` variant). So the
variant's expectation is ``completes`` with the window ``oops`` allowed (:attr:`Variant.window`),
and natural mode widens nfs_lookup's round trip as it widens open_context's.
"""

from __future__ import annotations

from stackfs.repro import evidence
from stackfs.repro.context import Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import (
    COMPLETES,
    OOPS,
    Case,
    History,
    Proc,
    Scenario,
    Variant,
    forced_barrier,
)
from stackfs.repro.workload import ProcResult

NAME = "export/build"
#: the chain of seed 003's crash dump, outermost first
SEED_CHAIN = (
    "do_filp_open",
    "path_openat",
    "lookup_open",
    "nfs_atomic_open",
    "nfs_lookup",
    "d_splice_alias",
)
OPENERS = 3


@register
class NfsAtomicOpen(Scenario):
    name = "nfs-atomic-open"
    seed = "003"
    requires = ("cat", "stat", "ls")
    summary = "three openers of one name in nfs_atomic_open: d_splice_alias on a hashed dentry"
    description = (
        "Stack: the NFS backend (entry_timeout=0), and in case union stackfs stacked over it. "
        "The NFS client looks up export/build and caches a negative dentry; another client "
        "then creates a directory of that name on the server; listing export gives the kernel "
        "a positive dentry (READDIRPLUS) while the client's own dcache stays negative, so "
        "every open of the name makes the kernel send a revalidating LOOKUP, in parallel. "
        "Three `cat` processes open it at once (in case union, through the union, whose "
        "dentry still says the regular file it saw before: the union's worker threads open "
        "the branch). Each goes lookup_open -> nfs_atomic_open, whose OPEN by name fails with "
        "EISDIR, then nfs_lookup -> d_splice_alias. 4.7-rc1 d_dropped only on ENOENT, so the "
        "dentry is still hashed: BUG_ON(!d_unhashed), the oops of seed 003. 4.7-rc3 d_drops "
        "on every error, which narrows the window: two openers that both d_drop before either "
        "splices still oops (seed 003 itself), so that outcome is allowed for the fixed "
        "variant; parallel-lookup closes it. Forced mode replays a stored schedule "
        "(stackfs/repro/schedules, found by stackfs explore): buggy's order of the three "
        "openers through nfs_atomic_open, open_context and nfs_lookup, which parallel-lookup "
        "meets as far as its path goes, and for fixed in case nfs seed 003's order (two "
        "openers d_drop before either splices: its window); natural mode starts them together and "
        "only widens the OPEN and LOOKUP round trips (open_context, nfs_lookup) by 5 ms."
    )
    variants = (
        Variant("buggy", OOPS, "d_drop only on ENOENT (Linux 4.7-rc1)", {"nfs": "buggy"}),
        Variant(
            "fixed",
            COMPLETES,
            "d_drop on every open_context error (Linux 4.7-rc3): narrows the window, two "
            "openers that both d_drop before either splices still oops (seed 003)",
            {"nfs": "fixed"},
            window=OOPS,
        ),
        Variant(
            "parallel-lookup",
            COMPLETES,
            "d_alloc_parallel: one lookup per name at a time (Linux 4.7)",
            {"nfs": "parallel-lookup"},
        ),
    )
    history = {
        "buggy": History(
            "4.7-rc1",
            None,
            ("nfs_atomic_open", "nfs_lookup", "d_splice_alias", "__d_rehash"),
            "d_drop only on ENOENT: a failed opener reaches d_splice_alias with the dentry hashed",
        ),
        "fixed": History(
            "4.7-rc3",
            None,
            ("nfs_atomic_open", "d_drop", "nfs_lookup", "d_splice_alias"),
            'd_drop on every open_context error (Al Viro, "Re: NFS/d_splice_alias breakage", '
            "LKML, 3 June 2016); narrows the window",
        ),
        "parallel-lookup": History(
            "4.7",
            "c94c0953",
            ("d_alloc_parallel", "nfs_atomic_open", "nfs_lookup", "d_splice_alias"),
            "nfs_atomic_open(): prevent parallel nfs_lookup() on a negative hashed dentry",
        ),
    }
    cases = (
        Case("nfs", "three cats open the name on the NFS mount"),
        Case("union", "three cats open it through stackfs stacked over the NFS mount"),
    )

    def mount(self, run: Run) -> None:
        if run.forced:
            inject = [forced_barrier("nfs_atomic_open", OPENERS)]
        else:
            # the OPEN and the LOOKUP are round trips to the server in the real client
            inject = ["nfs_open_context=delay:0.005", "nfs_lookup=delay:0.005"]
        files = {NAME: b"build log v1\n"} if run.case.name == "union" else {"export/README": b""}
        nfs = run.backend(
            "nfs",
            variant=run.params["nfs"],
            files=files,
            inject=inject,
            options=["entry_timeout=0", "attr_timeout=0"],
        )
        if run.case.name == "union":
            # the union trusts its own dentries and attributes for a minute
            run.union([nfs], options=["entry_timeout=60", "attr_timeout=60"])

    def _target(self, run: Run):
        top = run.layer("union") if run.case.name == "union" else run.layer("nfs")
        return top.mnt / NAME

    def prepare(self, run: Run) -> None:
        nfs = run.layer("nfs").mnt
        if run.case.name == "union":
            run.sh(["cat", self._target(run)])
            run.note(f"cat union/{NAME}: the union caches its dentry (a regular file)")
            run.server("nfs", "unlink", NAME)
            run.note(f"another client removes {NAME} on the server")
        res = run.sh(["stat", nfs / NAME], check=False)
        if res.returncode == 0:
            raise_setup(f"stat nfs/{NAME} found it; expected ENOENT")
        run.note(
            f"stat nfs/{NAME}: ENOENT, the NFS client caches a negative dentry "
            "(trusted for acdirmin, 30 s)"
        )
        run.server("nfs", "mkdir", NAME)
        run.note(f"another client creates the directory {NAME} on the server")
        listing = run.sh(["ls", nfs / "export"]).stdout.decode().split()
        if "build" not in listing:
            raise_setup(f"ls nfs/export does not show build: {listing}")
        run.note(
            "ls nfs/export shows it: the kernel now holds a positive dentry (READDIRPLUS), "
            "the NFS client's dcache still the negative one"
        )

    def workload(self, run: Run) -> list[Proc]:
        t = self._target(run)
        # cat opens the name; it is a directory now, so cat fails (EISDIR when it reads)
        return [Proc(["cat", t], label=f"cat {NAME}", ok_status=(1,)) for _ in range(OPENERS)]

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        ok = ["Is a directory"]
        if run.case.name == "union":
            # the union's cached inode is a regular file, the branch now has a directory
            ok.append("Input/output error")
        problems = [
            f"{r.render()}: expected {' or '.join(repr(o) for o in ok)}"
            for r in results
            if not any(o in r.stderr for o in ok)
        ]
        res = run.sh(["stat", "-c", "%F", run.layer("nfs").mnt / NAME], check=False)
        if res.stdout.decode().strip() != "directory":
            problems.append(
                f"nfs/{NAME} after the opens: "
                f"{(res.stdout or res.stderr).decode().strip()}, expected directory"
            )
        return problems

    def evidence(self, run: Run, report: dict) -> list[str]:
        # on the NFS mount the racing tasks are the cats themselves (as in the seed's dump);
        # through the union they are the union daemon's worker threads
        comms = {"cat"} if run.case.name == "nfs" else None
        # forced mode puts all three in the window together: the oops names the racing tasks
        # (4.7-rc1 oopses for a lone opener too, which natural mode shows)
        return evidence.oops(report, SEED_CHAIN, comms=comms, min_tasks=2 if run.forced else 1)


def raise_setup(message: str) -> None:
    from stackfs.repro.context import SetupError

    raise SetupError(message)
