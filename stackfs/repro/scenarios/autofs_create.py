"""Seed 001 (2007): "autofs4: deadlock during create" (commit 1864f7bd).

Two processes create a directory inside the automount at once: ``mkdir -p auto/proj/out1`` and
``mkdir -p auto/proj/out2``. The first one's ``mkdir("proj")`` looks the key up (autofs4's
``->lookup`` posts the mount request to the automount daemon); the second one's ``mkdir`` of the
same name revalidates the now hashed dentry *inside* ``filename_create``, holding the root
directory's i_rwsem exclusively. 2.6.18-22 waited for the daemon there
(``autofs4_revalidate`` -> ``try_to_fill_dentry`` -> ``autofs4_wait``), and the daemon's own
``mkdir`` of the mount point needs that very lock: the deadlock is the real kernel's, between
real processes (shared/NOTES.md, first bullet).
"""

from __future__ import annotations

from typing import Any

from stackfs.repro import evidence
from stackfs.repro.context import Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import (
    COMPLETES,
    DEADLOCK,
    History,
    Proc,
    Scenario,
    Variant,
    forced_barrier,
)
from stackfs.repro.workload import ProcResult

KEY = "proj"
README = b"the project volume, bind-mounted by the automount daemon\n"
OUTS = ("out1", "out2")


@register
class AutofsCreate(Scenario):
    name = "autofs-create"
    seed = "001"
    requires = ("mkdir", "stat", "cat")
    summary = (
        "autofs4 deadlock during create: a creator revalidates under the directory lock "
        "and waits for the daemon, whose mkdir needs that lock"
    )
    description = (
        "Stack: the autofs backend (an indirect map with the key proj) and its automount "
        "daemon (stackfs automountd, a separate process). Two real `mkdir -p auto/proj/outN` "
        'run together. The first mkdir("proj") is a ->lookup: autofs posts the mount request '
        "to the daemon (a FUSE daemon cannot drop the caller's lock as autofs4_lookup did, so "
        "it answers with the pending trigger and the wait moves to the caller's next, lock-free "
        'request: its chdir). The second mkdir("proj") finds the dentry and revalidates it '
        "in filename_create, holding the root's i_rwsem exclusively. The daemon creates the "
        "mount point with a real mkdir through the mount, then bind-mounts the map entry. "
        "buggy (2.6.18-22): the revalidation waits for the daemon (autofs4_wait), the daemon's "
        "mkdir waits for the lock: deadlock. fixed-1864f7bd: ->lookup leaves the dentry "
        "unhashed until the daemon's mkdir hashes one, so the second mkdir misses it in the "
        "(modelled) dcache and does its own ->lookup instead of revalidating under the lock; "
        "it gets EEXIST and waits in its chdir. "
        "fixed-2.6.38: waits only where a path walk crosses the dentry (d_automount). Forced "
        "mode replays the stored schedule of the buggy order (stackfs/repro/schedules, found "
        "by stackfs explore: the mkdirs and the daemon ordered at autofs4_notify_daemon), "
        "which the fixes meet as far as their paths go; natural mode starts the second mkdir "
        "20 ms after "
        "the first and forces nothing."
    )
    variants = (
        Variant(
            "buggy",
            DEADLOCK,
            "autofs4 2.6.18-22: revalidate waits for the daemon under the directory lock",
            {"autofs": "2.6.18"},
        ),
        Variant(
            "fixed-1864f7bd",
            COMPLETES,
            "delay the hashing of the dentry until the daemon's mkdir (1864f7bd, 2.6.23)",
            {"autofs": "1864f7bd"},
        ),
        Variant(
            "fixed-2.6.38",
            COMPLETES,
            "d_automount/d_manage: wait only with no lock held (2.6.38)",
            {"autofs": "2.6.38"},
        ),
    )
    history = {
        "buggy": History(
            "2.6.22 and earlier (2.6.18.8 read)",
            None,
            ("autofs4_lookup", "d_add", "autofs4_revalidate", "try_to_fill_dentry", "autofs4_wait"),
            "2.6.18.8's fs/autofs4/root.c: ->lookup hashes the dentry, drops the mutex; a "
            "pending negative dentry's revalidation waits, also under a create's lock",
        ),
        "fixed-1864f7bd": History(
            "2.6.23 until the look-aside list (2576737873dc, 2008)",
            "1864f7bd58351732593def024e73eca1f75bc352",
            ("autofs4_lookup", "d_instantiate", "autofs4_dir_mkdir", "d_add", "autofs4_wait"),
            "autofs4: deadlock during create: the dentry stays unhashed until ->mkdir, so a "
            "second creator goes through ->lookup (which drops the mutex), never ->d_revalidate",
        ),
        "fixed-2.6.38": History(
            "2.6.38 and later",
            "9875cf806403",
            ("follow_managed", "autofs_d_manage", "autofs_d_automount", "autofs_expire_wait"),
            "d_automount/d_manage, called with no locks held (the VFS commit; autofs4 was "
            "converted in the same release)",
        ),
    }
    threshold = 1.0
    timeout = 20.0

    def mount(self, run: Run) -> None:
        inject = [forced_barrier("autofs4_notify_daemon", 3)] if run.forced else []
        run.backend(
            "autofs",
            variant=run.params["autofs"],
            files={f".map/{KEY}/README": README},
            inject=inject,
            options=["timeout=0"],
        )

    def prepare(self, run: Run) -> None:
        run.note(
            f"automount map: key {KEY} -> a directory of the store, bind-mounted by the "
            "automount daemon (stackfs automountd) on autofs/" + KEY
        )

    def workload(self, run: Run) -> list[Proc]:
        mnt = run.layer("autofs").mnt
        return [
            Proc(
                ["mkdir", "-p", mnt / KEY / out],
                label=f"mkdir -p {KEY}/{out}",
                delay=0.0 if i == 0 else 0.02,
            )
            for i, out in enumerate(OUTS)
        ]

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        layer = run.layer("autofs")
        store = layer.store
        assert store is not None
        problems: list[str] = []
        for out in OUTS:
            # created inside the mounted map entry, not in the trigger directory
            if evidence.exists_via(layer.mnt / KEY / out) is not True:
                problems.append(f"autofs/{KEY}/{out} is missing after the mkdirs")
            if not (store / ".map" / KEY / out).is_dir():
                problems.append(
                    f"{KEY}/{out} is not in the map entry: the mkdir did not go "
                    "into the automounted directory"
                )
        problems += evidence.content("autofs (mounted)", layer.mnt / KEY / "README", [README])
        return problems

    def evidence(self, run: Run, report: dict) -> list[str]:
        return (
            evidence.blocked_task(report, "automountd")
            + evidence.blocked_task(report, "mkdir")
            + evidence.cycle_present(report)
            + _daemon_mkdir_in_filename_create(report)
            + _creator_waits_for_daemon(report)
        )


def _daemon_mkdir_in_filename_create(report: dict) -> list[str]:
    """The daemon's mkdir sleeps in filename_create on the directory's real i_rwsem."""
    for e in (report.get("graph") or {}).get("edges") or []:
        if (
            e.get("kind") == "lock_wait"
            and (e.get("attrs") or {}).get("at") == "filename_create"
            and str(e.get("src", "")).startswith("task:")
        ):
            src: dict[str, Any] = next(
                (n for n in report["graph"]["nodes"] if n["id"] == e["src"]), {}
            )
            if (src.get("attrs") or {}).get("comm") == "automountd":
                return []
    return [
        "the report does not show the automount daemon's mkdir waiting in "
        "filename_create for the directory's i_rwsem"
    ]


def _creator_waits_for_daemon(report: dict) -> list[str]:
    """The creator that holds the lock waits (in revalidate) for the daemon's wait queue."""
    edges = (report.get("graph") or {}).get("edges") or []
    holders = {
        e["dst"]
        for e in edges
        if e.get("kind") == "held_by"
        and str(e.get("src", "")).startswith("klock:")
        and (e.get("attrs") or {}).get("at") == "filename_create"
    }
    waits = {e["src"] for e in edges if e.get("kind") == "completion_wait"}
    fuse = {(e["src"], e["dst"]) for e in edges if e.get("kind") == "fuse_wait"}
    if any(t in holders and r in waits for t, r in fuse):
        return []
    return [
        "the report does not show the creator holding the directory's i_rwsem "
        "(filename_create) while it waits for the automount daemon (autofs4_wait)"
    ]
