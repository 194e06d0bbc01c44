"""Schedules checked in with the scenarios: ``SCENARIO.VARIANT.CASE.json``.

Each was found by ``stackfs explore`` (and minimised by its ddmin where that kept the outcome
deterministic); its ``note`` says how. ``stackfs repro run SCENARIO --variant V --case C
--schedule FILE`` replays one, and tests/repro/test_schedule_replay.py replays every one and
checks the variant's expected outcome (or, where the file says ``"expect"``, that outcome: the
window a fix that narrows it leaves, e.g. ``nfs-atomic-open.fixed.nfs.json``).

They are forced mode (:func:`forced`): a row (scenario, variant, case) is forced by its own
file, replayed as the file says (``"unreached"``, default ``error``: a decision whose label
never comes fails the run); else by the file of the same scenario and case whose
``"forced_for"`` names the variant, with the replay semantics it gives there (``{"fixed":
"free-run"}``: the buggy variant's order applied to the fix as far as the fix reaches its
points, the rest left to the free run); else by the scenario's hand-written barriers. A file
with ``"forced": false`` replays but forces nothing (its ``forced_why`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stackfs.kernel.sched import Replay, Schedule
from stackfs.repro.outcome import Outcome, valid_outcome

DIR = Path(__file__).parent


def stored(scenario: str, variant: str, case: str) -> Path | None:
    """The stored schedule of ``scenario`` / ``variant`` / ``case``, if there is one."""
    path = DIR / f"{scenario}.{variant}.{case}.json"
    return path if path.is_file() else None


def all_stored() -> list[tuple[str, str, str, Path]]:
    """(scenario, variant, case, path) of every stored schedule."""
    out = []
    for path in sorted(DIR.glob("*.json")):
        scenario, variant, case = path.name[: -len(".json")].split(".")
        out.append((scenario, variant, case, path))
    return out


@dataclass(frozen=True)
class Forced:
    """The stored schedule that forces a row, and how it is replayed there."""

    path: Path
    schedule: Schedule
    unreached: str | None  # None: as the file says

    def strategy(self) -> Replay:
        return Replay(self.schedule, self.unreached)

    def note(self) -> str:
        how = f", unreached: {self.unreached}" if self.unreached else ""
        return f"forced by the stored schedule {self.path.name}{how}"


def forced(scenario: str, variant: str, case: str) -> Forced | None:
    """The stored schedule that is the forced mode of ``scenario`` / ``variant`` / ``case``
    (see the module docstring), or None: the scenario's barriers force it."""
    own = stored(scenario, variant, case)
    if own is not None and _forces(sched := Schedule.read(own)):
        return Forced(own, sched, None)
    for name, _v, c, path in all_stored():
        if name != scenario or c != case:
            continue
        sched = Schedule.read(path)
        if not _forces(sched):
            continue
        table = sched.meta.get("forced_for") or {}
        if variant in table:
            return Forced(path, sched, str(table[variant]))
    return None


def _forces(sched: Schedule) -> bool:
    """Whether a stored schedule is forced mode: a file says ``"forced": false`` (and why, in
    ``forced_why``) when it replays but is not deterministic enough under load to stand in for
    the scenario's barriers yet."""
    return sched.meta.get("forced", True) is not False


def expected(sched: Schedule, default: str) -> Outcome:
    """The outcome replaying a stored schedule must show: its ``"expect"`` (the window a fix
    that narrows it leaves), else ``default`` (the variant's expectation). An ``"expect"``
    that is no outcome a variant may expect is an error (:func:`~stackfs.repro.outcome.
    valid_outcome`)."""
    want = sched.meta.get("expect", default)
    if not isinstance(want, str) or not valid_outcome(want):
        raise ValueError(f"schedule {sched.meta.get('scenario')}: expect {want!r} is no outcome")
    return Outcome(want)
