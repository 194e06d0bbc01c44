"""Seed 001 (2008): the autofs4 expire/lookup race ("Re: Linux 2.6.26-rc4", Ian Kent's
description quoted by Jeff Moyer).

"During an expire the situation can arise that a directory is removed and another lookup is
done before the expire issues a completion status to the kernel module. [...] the lookup gets
a new dentry, [...] when it posts its mount request, matches the existing expire request and
waits for its completion. ENOENT is then returned to user space from lookup (as the dentry
passed in is now unhashed) without having performed the mount request." Here a real ``cat``
of a file on the automounted volume sees that ENOENT (its exit status and its message say so),
and a second ``cat`` then mounts the key fine.
"""

from __future__ import annotations

import os
import time

from stackfs.repro import evidence
from stackfs.repro.context import Run, SetupError
from stackfs.repro.registry import register
from stackfs.repro.scenario import (
    COMPLETES,
    History,
    Proc,
    Scenario,
    ServerAction,
    Variant,
    error,
    forced_barrier,
)
from stackfs.repro.workload import ProcResult
from stackfs.runtime import control

KEY = "proj"
README = "README"
DATA = b"the project volume\n"


@register
class AutofsExpire(Scenario):
    name = "autofs-expire"
    seed = "001"
    requires = ("ls", "cat")
    summary = (
        "autofs4 expire vs lookup: a lookup joins the pending expire's wait queue and "
        "the walk returns ENOENT"
    )
    description = (
        "Stack: the autofs backend (an indirect map with the key proj) and its automount "
        "daemon (stackfs automountd). proj is mounted (ls autofs/proj), then expired (stackfs "
        "server autofs expire proj): the daemon unmounts it and removes the mount point "
        "through the mount, and reports the expire's completion only after that. A real `cat "
        "autofs/proj/README` arrives in between: its ->lookup of proj gets a new dentry. "
        "buggy (2.6.18): ->lookup hashes the new dentry; its mount request matches the "
        "pending expire by name (autofs4_wait), it wakes when the expire completes and "
        "nothing has instantiated the dentry: cat fails with ENOENT, and the next cat mounts "
        "proj fine. fixed-rehash (the rehash list, f50b6f8691ca, 2.6.21): the lookup reuses the "
        "unhashed expiring dentry (autofs4_lookup_unhashed), waits for the expire, then "
        "mounts. "
        "fixed-2.6.38: the walk waits in d_manage, then mounts in d_automount. Forced mode "
        "replays the stored schedule of the buggy order (stackfs/repro/schedules, found by "
        "stackfs explore: the expire, then cat, the daemon's completion released before cat's "
        "lookup waits), which the fixes meet as far as their paths go; natural mode expires "
        "at a random moment within "
        "20 ms of the cat's start and only lets the completion take 10 ms "
        "(autofs4_expire_ready=delay:0.01)."
    )
    variants = (
        Variant(
            "buggy",
            error("ENOENT"),
            "autofs4 2.6.18-20: the new dentry's mount request joins the expire's queue by "
            "name; nothing instantiates it: ENOENT",
            {"autofs": "2.6.18"},
        ),
        Variant(
            "fixed-rehash",
            COMPLETES,
            "the rehash list: ->lookup reuses the unhashed expiring dentry, waits for the "
            "expire, then mounts (autofs4_lookup_unhashed, f50b6f8691ca, 2.6.21)",
            {"autofs": "rehash"},
        ),
        Variant(
            "fixed-2.6.38",
            COMPLETES,
            "d_manage waits for the expire, d_automount mounts (2.6.38)",
            {"autofs": "2.6.38"},
        ),
    )
    #: renamed after root.c's history (issue 23): the look-aside list (2576737873dc) came after
    #: the rehash list, which is what fixed this race
    variant_aliases = {"fixed-lookaside": "fixed-rehash"}
    history = {
        "buggy": History(
            "2.6.20 and earlier (2.6.18.8 and 2.6.20 read)",
            None,
            (
                "autofs4_lookup",
                "d_add",
                "autofs4_wait",
                "autofs4_dir_rmdir",
                "autofs4_expire_indirect",
            ),
            "2.6.18.8's fs/autofs4/root.c: autofs4_dir_rmdir only d_drops the expiring dentry; "
            "the next ->lookup gets a new one whose mount request autofs4_wait matches, by "
            "name, with the pending expire; the walk gets the dentry still negative: ENOENT",
        ),
        "fixed-rehash": History(
            "2.6.21 and later (the rehash list, until 2576737873dc's look-aside list)",
            "f50b6f8691cae2e0064c499dd3ef3f31142987f0",
            ("autofs4_lookup_unhashed", "autofs4_dir_rmdir", "autofs4_lookup", "autofs4_wait"),
            'autofs4: fix another race between mount and expire (Ian Kent, 2007-02-20): "keep '
            'track of dentrys in this unhashed state and reuse them" (the words the 2.6.26-rc4 '
            "thread of seed 001 quotes); autofs4_dir_rmdir puts the dropped dentry on "
            "sbi->rehash_list, autofs4_lookup takes it back and waits while it is "
            "AUTOFS_INF_EXPIRING",
        ),
        "fixed-2.6.38": History(
            "2.6.38 and later",
            "9875cf806403",
            ("follow_managed", "autofs_d_manage", "autofs_expire_wait", "autofs_d_automount"),
            "d_manage waits for the expire with no lock held, d_automount mounts",
        ),
    }
    threshold = 1.0
    timeout = 20.0

    def mount(self, run: Run) -> None:
        # forced: the expire's completion waits for a lookup; natural: it only takes 10 ms
        # (the daemon's bookkeeping after the rmdir), as a window a lookup may or may not hit
        inject = [
            forced_barrier("autofs4_expire_ready", 2)
            if run.forced
            else "autofs4_expire_ready=delay:0.01"
        ]
        run.backend(
            "autofs",
            variant=run.params["autofs"],
            files={f".map/{KEY}/{README}": DATA},
            inject=inject,
            options=["timeout=0"],
        )

    def prepare(self, run: Run) -> None:
        mnt = run.layer("autofs").mnt
        listing = run.sh(["ls", mnt / KEY]).stdout.decode().split()
        if README not in listing:
            raise SetupError(f"ls autofs/{KEY} shows {listing}, not the mounted map entry")
        run.note(f"ls autofs/{KEY}: the automount daemon mounted it ({README} is there)")
        if run.forced:
            msg = run.server("autofs", "expire", KEY)
            run.note(
                f"stackfs server autofs expire {KEY}: {msg} (the daemon unmounted it and "
                "removed the mount point; the expire's completion is not reported yet)"
            )

    def concurrent(self, run: Run) -> list[ServerAction]:
        return [ServerAction("autofs", "expire", (KEY,))]

    def workload(self, run: Run) -> list[Proc]:
        mnt = run.layer("autofs").mnt
        return [Proc(["cat", mnt / KEY / README], label=f"cat {KEY}/{README}")]

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        layer = run.layer("autofs")
        problems: list[str] = []
        for r in results:
            if r.ok and r.stdout.encode() != DATA:
                problems.append(f"{r.render()}: read {r.stdout!r}, not the map entry's {README}")
        # the mount then succeeds: a second lookup mounts the key, once the expire completed
        # (the server action returns at the rmdir, its completion still pending: a read then
        # joins the expire, and in 2.6.18 gets the seed's ENOENT itself)
        if not _expire_completed(layer.mnt):
            problems.append(f"the expire of {KEY} never reported its completion")
        problems += evidence.content("autofs (mounted again)", layer.mnt / KEY / README, [DATA])
        enoent = _events(layer.mnt, "lookup_enoent")
        failed = [r for r in results if r.exited and not r.ok]
        if failed and not enoent:
            problems.append(
                "a process failed but the autofs model recorded no lookup that "
                "woke on the expire with its dentry unhashed"
            )
        for ev in enoent:
            run.note(f"autofs model: {ev.get('summary')}")
        for ev in _events(layer.mnt, "wait_under_lock"):
            run.note(f"lockdep-style warning: {ev.get('summary')}")
        return problems


def _expire_completed(mnt: os.PathLike[str], timeout: float = 5.0) -> bool:
    """The daemon reported the expire's completion: no expire wait queue of KEY is pending in
    the backend's state (``autofs4_wait_release`` done). False when it never was."""
    end = time.monotonic() + timeout
    while True:
        try:
            state = control.query(mnt, {"op": "state"}, timeout=2.0)
        except control.ControlError:
            return False
        queues = ((state.get("daemon") or {}).get("autofs") or {}).get("wait_queues") or []
        if not any(q.get("name") == KEY and q.get("type") == "expire" for q in queues):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)


def _events(mnt: os.PathLike[str], type_: str) -> list[dict]:
    try:
        state = control.query(mnt, {"op": "state"}, timeout=2.0)
    except control.ControlError:
        return []
    return [e for e in state.get("events") or [] if e.get("type") == type_]
