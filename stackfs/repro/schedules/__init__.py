"""Schedules checked in with the scenarios: ``SCENARIO.VARIANT.CASE.json``.

Each was found by ``stackfs explore`` (and minimised by its ddmin where that kept the outcome
deterministic); its ``note`` says how. ``stackfs repro run SCENARIO --variant V --case C
--schedule FILE`` replays one, and tests/repro/test_schedule_replay.py replays every one and
checks the variant's expected outcome (or, where the file says ``"expect"``, that outcome: the
window a fix that narrows it leaves, e.g. ``nfs-atomic-open.fixed.nfs.json``). Forced mode
does not use them (yet): it keeps its hand-written barriers.
"""

from __future__ import annotations

from pathlib import Path

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
