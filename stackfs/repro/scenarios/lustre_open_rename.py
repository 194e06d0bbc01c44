"""Seed 002: Lustre's open by FID racing another client's rename (ENOENT, ESTALE, one retry).

A Lustre client that trusts its cached dentry opens the file by FID (``ll_file_open`` ->
``ll_intent_file_open``). If another client renamed over the file in between, the MDT has no
object of that FID and answers ENOENT; the 2016 client passed it up (``cat`` fails), the fixes
turn it into ESTALE so that the VFS retries the open once with LOOKUP_REVAL and the retry goes
by name (LU-8371 for creates, LU-14949 for every open). The seed's own proposal, ESTALE with a
retry that trusts the new dentry and opens by FID again, fails with ESTALE when a second rename
lands during the retry: "it's only once". Two real mounts of one store (two daemons, two
clients); the retry is the real kernel's (shared/NOTES.md).
"""

from __future__ import annotations

from pathlib import Path

from backends.mdt import MdtLog, Request
from stackfs.repro import evidence
from stackfs.repro.context import Run
from stackfs.repro.registry import register
from stackfs.repro.scenario import COMPLETES, Case, History, Proc, Scenario, Variant, error
from stackfs.repro.workload import ProcResult
from stackfs.runtime.service import timeout_factor

FILE = "job/out.dat"
NEW = ("job/out.dat.tmp1", "job/out.dat.tmp2")
DATA = (
    b"out v1: the file client A has cached\n",
    b"out v2: renamed over it by client B\n",
    b"out v3: renamed over it again by client B\n",
)
#: the MDT's directory in the run's scratch (its request log)
MDT_DIR = "lustre-mdt"
#: forced mode: how long each client waits for the other (the waits end on what the MDT saw)
FORCED_WAIT = 2.0
#: natural mode: OBD_FAIL_LLITE_OPEN_DELAY widens the window a little
NATURAL_OPEN_DELAY = 0.01
#: natural mode: the opener starts up to this many seconds after the mover
NATURAL_SPREAD = 0.03


@register
class LustreOpenRename(Scenario):
    name = "lustre-open-rename"
    seed = "002"
    requires = ("cat", "dd", "mv", "sh", "stat")
    summary = "Lustre open by FID vs another client's rename: ENOENT/ESTALE, the VFS's one retry"
    description = (
        "Stack: two mounts of one Lustre store (the MDT), each its own client daemon (A and "
        "B). Client A has job/out.dat cached (stat); then it opens the file while client B "
        "renames another file over it with a real `mv` on the second mount. Case cat is "
        "Lustre's sanityn 31r (A's `cat`, B's `mv`, cat must succeed); case create opens "
        "with O_CREAT (`dd conv=notrunc`), the seed's case; case contended is create with a "
        "second `mv` landing during the VFS's retry. A trusted dentry opens by FID "
        "(ll_file_open -> ll_intent_file_open); the MDT answers ENOENT for the renamed-over "
        "object. buggy (2016) refuses OPEN|CREATE in ll_revalidate_dentry, so creates open by "
        "name, and passes ENOENT up: cat fails. lu-8371 trusts creates, refuses the "
        "LOOKUP_REVAL retry and turns ENOENT into ESTALE for creates; lu-14949 does it for "
        "every open: all complete. estale-by-fid (the seed's proposal) retries by FID again: "
        "the second rename makes ESTALE reach the process. Forced mode replays a stored "
        "schedule per case (stackfs/repro/schedules, found by stackfs explore): B's rename "
        "released between A's LOOKUP and its open by FID (ll_file_open), in case contended the "
        "second rename between the REVAL LOOKUP and the retry's open; a variant without a "
        "schedule of its own meets another's order as far as its path goes. Natural mode only "
        "delays the open by 10 ms and starts the opener a random "
        "0-30 ms after the mv."
    )
    variants = (
        Variant(
            "buggy",
            error("ENOENT"),
            "revalidate refuses OPEN|CREATE, ENOENT from the open by FID as is (2016)",
            {"lustre": "buggy"},
            per_case={"create": COMPLETES, "contended": COMPLETES},
        ),
        Variant(
            "lu-8371",
            error("ENOENT"),
            "trust creates, LOOKUP_REVAL by name, ESTALE for creates (LU-8371)",
            {"lustre": "lu-8371"},
            per_case={"create": COMPLETES, "contended": COMPLETES},
        ),
        Variant(
            "lu-14949",
            COMPLETES,
            "ESTALE for every open, the retry opens by name (LU-14949)",
            {"lustre": "lu-14949"},
        ),
        Variant(
            "estale-by-fid",
            error("ENOENT"),
            "the seed's proposal: ESTALE for creates, the retry opens by FID again",
            {"lustre": "estale-by-fid"},
            per_case={"create": COMPLETES, "contended": error("ESTALE")},
        ),
    )
    history = {
        "buggy": History(
            "Lustre client of 2016 (before LU-8371)",
            None,
            ("ll_revalidate_dentry", "ll_file_open", "ll_intent_file_open", "mdt_reint_open"),
            "revalidate refuses OPEN|CREATE dentries; the open by FID passes the MDT's ENOENT up",
        ),
        "lu-8371": History(
            "Lustre with LU-8371 (2016)",
            "LU-8371",
            ("ll_revalidate_dentry", "ll_intent_file_open", "ll_file_open"),
            "trust dentries, refuse LOOKUP_REVAL (the retry opens by name); ESTALE for creates",
        ),
        "lu-14949": History(
            "Lustre with LU-14949 (2021)",
            "LU-14949",
            ("ll_intent_file_open", "ll_file_open", "ll_revalidate_dentry"),
            "ENOENT from every open by FID becomes ESTALE, the VFS's one retry goes by name",
        ),
        "estale-by-fid": History(
            "the seed's proposal (not merged)",
            None,
            ("ll_intent_file_open", "ll_revalidate_dentry"),
            "ESTALE for creates, but the retry trusts the dentry and opens by FID again",
        ),
    }
    cases = (
        Case("cat", "sanityn 31r: cat on client A, mv over the file on client B"),
        Case("create", "open(O_CREAT) (dd conv=notrunc) on A, mv over the file on B"),
        Case("contended", "open(O_CREAT) on A, two mvs on B, the second during the retry"),
    )
    threshold = 5.0  # forced waits are bounded by FORCED_WAIT; nothing may hang

    def mount(self, run: Run) -> None:
        mdt = run.dir(MDT_DIR)
        common = [f"mdt={mdt}"]
        files = {FILE: DATA[0], NEW[0]: DATA[1], NEW[1]: DATA[2]}
        if run.forced:
            # the waits end on what the MDT saw; the bound (a client that never comes) follows
            # the machine's speed
            wait = FORCED_WAIT * timeout_factor()
            a_opts = [f"open_waits_rename={wait:g}"]
            b_opts = [f"rename_waits_open={wait:g}"]
            inject: list[str] = []
        else:
            a_opts, b_opts = [], []
            inject = [f"ll_file_open=delay:{NATURAL_OPEN_DELAY}"]
        a = run.backend(
            "lustre",
            variant=run.params["lustre"],
            files=files,
            inject=inject,
            options=common + ["client=A"] + a_opts,
        )
        run.backend(
            "lustre",
            role="lustre2",
            variant=run.params["lustre"],
            store_of=a,
            options=common + ["client=B"] + b_opts,
        )

    def prepare(self, run: Run) -> None:
        a = run.layer("lustre").mnt
        run.sh(["stat", "-c", "%i", a / FILE])
        run.note(f"stat A:{FILE}: client A caches the dentry (its FID)")

    def workload(self, run: Run) -> list[Proc]:
        a, b = run.layer("lustre").mnt, run.layer("lustre2").mnt
        if run.case.name == "cat":
            opener = Proc(["cat", a / FILE], label=f"cat A:{FILE}")
        else:
            opener = Proc(
                ["dd", "if=/dev/null", f"of={a / FILE}", "conv=notrunc", "status=none"],
                label=f"dd of=A:{FILE} (open O_CREAT)",
            )
        if run.case.name == "contended":
            mover = Proc(
                ["sh", "-c", f"mv '{b / NEW[0]}' '{b / FILE}' && mv '{b / NEW[1]}' '{b / FILE}'"],
                label=f"mv B:{NEW[0]} B:{FILE}; mv B:{NEW[1]} B:{FILE}",
            )
        else:
            mover = Proc(["mv", b / NEW[0], b / FILE], label=f"mv B:{NEW[0]} B:{FILE}")
        if run.forced:
            return [opener, mover]
        # natural mode: mv needs longer to reach its RENAME than the opener its OPEN, so the
        # opener starts a random 0-30 ms after it
        opener.delay = run.rng.uniform(0.0, NATURAL_SPREAD)
        return [mover, opener]

    # -- judging -----------------------------------------------------------------------------

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        opener = next(r for r in results if r.argv[0] in ("cat", "dd"))
        problems: list[str] = []
        last = DATA[2] if run.case.name == "contended" else DATA[1]
        store = run.layer("lustre").store
        assert store is not None
        problems += evidence.content("the MDT (store)", store / FILE, [last])
        if run.case.name == "cat" and opener.ok:
            seen = opener.stdout.encode()
            allowed = [DATA[1]] if run.forced else [DATA[0], DATA[1]]
            if seen not in allowed:
                problems.append(f"cat printed {seen!r}, expected {' or '.join(map(repr, allowed))}")
        log = MdtLog(run.path(MDT_DIR)).read()
        timeline = _timeline(log, opener.pid)
        run.note(
            f"one open(2) of {opener.comm}/{opener.pid} on client A, with client B's "
            "requests between (from the MDT's log; modelled FIDs):"
        )
        for line in timeline:
            run.note("  " + line)
        if run.forced:
            problems += _window_problems(log, opener, run)
        return problems


def _timeline(log: list[Request], pid: int) -> list[str]:
    """The opener's requests and the other client's renames from the opener's first LOOKUP of
    the file to its last OPEN: what one open(2) did, and what came between."""
    mine = [r for r in log if r.tid == pid and r.name == Path(FILE).name]
    if not mine:
        return ["(no request of this task reached the MDT)"]
    t0, t1 = mine[0].t, mine[-1].t
    out = []
    for r in log:
        if (r.tid == pid and r.name == Path(FILE).name) or (
            r.op == "RENAME" and r.client != mine[0].client and r.t <= t1 + 0.5 and r.t >= t0 - 0.5
        ):
            out.append(f"+{(r.t - t0) * 1000:7.1f} ms  {r.client} {r.comm}/{r.tid}  {r.describe()}")
    return out


def _window_problems(log: list[Request], opener: ProcResult, run: Run) -> list[str]:
    """Forced mode: the race window was really hit, as the variant's code path says."""
    name = Path(FILE).name
    mine = [r for r in log if r.tid == opener.pid and r.name == name]
    renames = [r for r in log if r.op == "RENAME" and r.client == "B" and r.result == "ok"]
    lookups = [r for r in mine if r.op == "LOOKUP" and r.open_intent]
    opens = [r for r in mine if r.op == "OPEN"]
    if not lookups or not renames:
        return ["the MDT's log has no open-intent LOOKUP of client A or no rename of client B"]
    first = lookups[0]
    if not any(r.t > first.t and r.replaced == first.fid for r in renames):
        return [f"client B's rename did not replace {first.fid} after client A's LOOKUP"]
    variant = run.params["lustre"]
    if variant == "buggy" and run.case.name != "cat":
        if first.how != "intent-open" or not opens or opens[0].how != "intent":
            return ["buggy create: expected the LOOKUP to refuse the dentry and open by name"]
        return []
    failed = [r for r in opens if r.how == "by-fid" and r.result != "ok"]
    if not failed:
        return ["no open by FID failed: the rename did not land in the window"]
    if failed[0].result == "ESTALE":
        if len(opens) != 2:
            return [
                f"an ESTALE open must be retried exactly once by the VFS: {len(opens)} "
                "OPENs reached the daemon for one open(2)"
            ]
        if not any(r.reval for r in mine):
            return ["no LOOKUP_REVAL walk after the ESTALE"]
    if run.case.name == "contended" and failed[0].result == "ESTALE":
        reval = [r for r in mine if r.reval]
        if not any(r.t > reval[0].t for r in renames):
            return ["contended: client B's second rename did not land during the retry"]
    return []
