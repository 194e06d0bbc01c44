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

from stackfs import control
from stackfs.repro import evidence
from stackfs.repro.context import Run, SetupError
from stackfs.repro.registry import register
from stackfs.repro.scenario import (
    COMPLETES,
    Proc,
    Scenario,
    ServerAction,
    Variant,
    error,
    forced_barrier,
)
from stackfs.repro.workload import ProcResult

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
        "buggy (2.6.23): its mount request matches the pending expire by name (autofs4_wait), "
        "it wakes when the expire completes with its dentry unhashed and no mount done: cat "
        "fails with ENOENT, and the next cat mounts proj fine. fixed-lookaside "
        "(2576737873dc): the lookup reuses the expiring dentry from the look-aside list, "
        "waits for the expire, then mounts. "
        "fixed-2.6.38: the walk waits in d_manage, then mounts in d_automount. Forced mode "
        "holds the expire's completion until a lookup waits for it "
        "(autofs4_expire_ready=barrier:2); natural mode expires at a random moment within "
        "20 ms of the cat's start and only lets the completion take 10 ms "
        "(autofs4_expire_ready=delay:0.01)."
    )
    variants = (
        Variant(
            "buggy",
            error("ENOENT"),
            "autofs4 2.6.23: the lookup waits on the expire's queue, its dentry unhashed",
            {"autofs": "1864f7bd"},
        ),
        Variant(
            "fixed-lookaside",
            COMPLETES,
            "reuse the expiring dentry from a look-aside list (2576737873dc, 2.6.26)",
            {"autofs": "lookaside"},
        ),
        Variant(
            "fixed-2.6.38",
            COMPLETES,
            "d_manage waits for the expire, d_automount mounts (2.6.38)",
            {"autofs": "2.6.38"},
        ),
    )
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
        # the mount then succeeds: a second lookup mounts the key
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


def _events(mnt: os.PathLike[str], type_: str) -> list[dict]:
    try:
        state = control.query(mnt, {"op": "state"}, timeout=2.0)
    except control.ControlError:
        return []
    return [e for e in state.get("events") or [] if e.get("type") == type_]
