"""Seed 000: aufs stalls over OpenAFS (copy-up locks the AFS inode, then AFS open locks it again).

aufs copies a lower file up under the lower inode's i_mutex and opens it with the lock held
(``au_cp_regular`` -> ``dentry_open``); OpenAFS' open flushes the page cache when the file's data
version changed on the fileserver, under the same i_mutex (``afs_linux_open`` -> ``afs_open`` ->
``osi_FlushPages`` -> ``osi_VM_FlushPages`` -> ``afs_linux_lock_inode``): one task, one lock,
taken twice. Here the union takes the AFS inode's modelled i_rwsem through the lower mount
(``trusted.stackfs.i_rwsem``) from its worker thread, and the AFS backend's open takes it again.
"""

from __future__ import annotations

from stackfs.repro import evidence
from stackfs.repro.context import Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import (
    COMPLETES,
    DEADLOCK,
    Case,
    History,
    Proc,
    Scenario,
    ServerAction,
    Variant,
)
from stackfs.repro.workload import ProcResult

FILE = "proj/results.dat"
NEW = "proj/results.old"
V1 = b"results v1: written by this client\n"
V2 = b"results v2: rewritten by another AFS client on the fileserver\n"
APPENDED = b"appended through the union\n"


@register
class AufsAfsCopyup(Scenario):
    name = "aufs-afs-copyup"
    seed = "000"
    requires = ("cat", "mv", "sh")
    summary = "aufs copy-up over OpenAFS: the copy-up's i_mutex, taken again by afs_open's flush"
    description = (
        "Stack: stackfs (aufs copy-up order) with a local upper branch over the AFS backend. "
        "A file of the AFS branch is read through the union, so the kernel caches its pages; "
        "then another AFS client rewrites it on the fileserver, which moves its data version "
        "and breaks the callback: the next open on this client must flush the cached pages. "
        "The workload copies the file up: a real `mv` to a new name inside the union (case "
        "mv), or an open for writing (`sh -c 'echo ... >> f'`, case open-write). Copy-up takes "
        "the AFS inode's i_rwsem (i_mutex), then opens the file; AFS open flushes under the "
        "same lock (osi_VM_FlushPages): recursive locking, the copy-up's worker and the "
        "workload hang. Fixed by dropping the lock before the open (aufs 2024) or by not "
        "flushing under the lock in open (OpenAFS proposal). Forced mode replays the stored "
        "schedule of the case (stackfs/repro/schedules, found by stackfs explore: the other "
        "client's write released before the workload starts), which the fixes meet too. "
        "Natural mode: the other client's "
        "write lands at a random moment within 20 ms of the workload's start instead of "
        "before it, so the copy-up may open the file before or after the data version moves."
    )
    variants = (
        Variant(
            "buggy",
            DEADLOCK,
            "copyup=aufs over AFS buggy (2014 aufs, OpenAFS)",
            {"copyup": "aufs", "afs": "buggy"},
        ),
        Variant(
            "fixed-aufs",
            COMPLETES,
            "copyup=aufs-unlock: the union drops the lock before open (aufs 2024)",
            {"copyup": "aufs-unlock", "afs": "buggy"},
        ),
        Variant(
            "fixed-afs",
            COMPLETES,
            "AFS fixed: no page flush under the lock in open (flush in read)",
            {"copyup": "aufs", "afs": "fixed-afs"},
        ),
    )
    history = {
        "buggy": History(
            "aufs before 2024 over OpenAFS 1.6 (any kernel)",
            None,
            (
                "au_cp_regular",
                "dentry_open",
                "afs_linux_open",
                "afs_open",
                "osi_FlushPages",
                "osi_VM_FlushPages",
                "afs_linux_lock_inode",
            ),
            "the copy-up opens the lower file with its i_mutex held; OpenAFS' open flushes "
            "under the same i_mutex (OpenAFS never changed it)",
        ),
        "fixed-aufs": History(
            "aufs 2024 (the standalone aufs tree)",
            None,
            ("au_test_fs_unlock_for_open", "au_cp_regular", "dentry_open"),
            "aufs drops the source lock around the open on filesystems whose open takes it "
            "(NFS, f2fs); no commit id recorded here",
        ),
        "fixed-afs": History(
            "OpenAFS proposal (not merged)",
            None,
            ("afs_linux_open", "afs_open", "osi_FlushPages"),
            "the OpenAFS thread's proposal: no flush under the lock in open (flush after the "
            "reply, in read/mmap)",
        ),
    }
    cases = (
        Case("mv", "mv of a lower file to a new name inside the union (rename copies it up)"),
        Case("open-write", "open for writing (append) of a lower file through the union"),
    )

    def mount(self, run: Run) -> None:
        afs = run.backend("afs", variant=run.params["afs"], files={FILE: V1})
        run.union([afs], copyup=run.params["copyup"])

    def prepare(self, run: Run) -> None:
        u = run.layer("union").mnt
        run.sh(["cat", u / FILE])
        run.note(
            f"cat union/{FILE}: read through the union, so the kernel caches the AFS "
            "file's pages (data version 1)"
        )
        if run.forced:
            run.server("afs", "write", FILE, V2.decode())
            run.note(
                f"another client rewrites {FILE} on the fileserver (stackfs server afs "
                "write): its data version moves to 2 and the callback breaks, so the next "
                "open on this client must flush the cached pages (afs_open -> "
                "osi_FlushPages -> osi_VM_FlushPages)"
            )

    def concurrent(self, run: Run) -> list[ServerAction]:
        return [ServerAction("afs", "write", (FILE, V2.decode()))]

    def workload(self, run: Run) -> list[Proc]:
        u = run.layer("union").mnt
        if run.case.name == "mv":
            return [Proc(["mv", u / FILE, u / NEW], label=f"mv {FILE} {NEW}")]
        return [
            Proc(
                ["sh", "-c", f"echo '{APPENDED.decode().strip()}' >> '{u / FILE}'"],
                label=f"sh -c 'echo ... >> {FILE}'",
            )
        ]

    def _versions(self, run: Run) -> list[bytes]:
        # natural mode: the other client's write may land before or after the copy-up
        return [V2] if run.forced else [V2, V1]

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        union = run.layer("union")
        u, up = union.mnt, union.upper
        assert up is not None
        store = run.layer("afs").store
        assert store is not None
        problems: list[str] = []
        if run.case.name == "mv":
            problems += evidence.content("union", u / NEW, self._versions(run))
            problems += evidence.content("upper branch", up / NEW, self._versions(run))
            problems += evidence.absent("union", u / FILE)
        else:
            want = [v + APPENDED for v in self._versions(run)]
            problems += evidence.content("union", u / FILE, want)
            problems += evidence.content("upper branch", up / FILE, want)
        # the union never writes to a read-only branch: the fileserver keeps its version
        problems += evidence.content("AFS fileserver", store / FILE, [V2])
        return problems

    def evidence(self, run: Run, report: dict) -> list[str]:
        comm = "mv" if run.case.name == "mv" else "sh"
        return (
            evidence.blocked_task(report, comm)
            + evidence.cycle_present(report)
            + evidence.recursive_lock(
                report, via="osi_VM_FlushPages", fsname_kind="afs", lock="i_rwsem"
            )
        )
