"""Aggregate runs per scenario/case/variant: how often, how fast, how well recovered."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stackfs.repro.runner import SETUP_ERROR, RunResult
from stackfs.repro.scenario import NATURAL


@dataclass
class Summary:
    """The runs of one scenario (case) in one variant and mode."""

    scenario: str
    seed: str
    case: str
    variant: str
    mode: str
    expected: str
    runs: int = 0
    matched: int = 0
    reproduced: int = 0
    setup_errors: int = 0
    recovered: int = 0
    observed: Counter[str] = field(default_factory=Counter)
    time_to_reproduce: list[float] = field(default_factory=list)
    time_to_verdict: list[float] = field(default_factory=list)
    detection_latency: list[float] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)
    #: wall-clock seconds of all runs (set-up, workload, detection, recovery)
    wall: float = 0.0
    first_reproduction_after: float | None = None
    report_dirs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def row(self) -> str:
        return self.scenario if self.case == "default" else f"{self.scenario} ({self.case})"

    @property
    def is_bug(self) -> bool:
        return self.expected != "completes"

    @property
    def all_matched(self) -> bool:
        return self.runs > 0 and self.matched == self.runs

    @property
    def failure(self) -> str | None:
        """Why these runs, taken together, fail their variant (None: they do not).

        Each run must match. In natural mode a run of a buggy variant in which the bug did not
        happen matches (natural mode measures a rate), but a buggy variant that never
        reproduced in all its runs fails: a rate of 0/N shows nothing about the bug. (A fixed
        variant that ever reproduced fails run by run.)
        """
        if self.runs == 0:
            return "no runs"
        if self.matched < self.runs:
            return f"{self.runs - self.matched} of {self.runs} runs did not match"
        if self.mode == NATURAL and self.is_bug and self.reproduced == 0:
            return (
                f"the bug never reproduced in {self.runs} natural run"
                f"{'s' if self.runs != 1 else ''} (0/100): nothing shows the "
                f"{self.variant} variant has it"
            )
        return None

    @property
    def rate(self) -> float | None:
        """Reproductions per 100 runs."""
        return 100.0 * self.reproduced / self.runs if self.runs else None

    @property
    def per_minute(self) -> float | None:
        """Reproductions per minute of wall-clock time (set-up and recovery included)."""
        return 60.0 * self.reproduced / self.wall if self.wall > 0 else None

    def observed_text(self) -> str:
        if len(self.observed) == 1:
            ((what, n),) = self.observed.items()
            return what if n == 1 else f"{what} ×{n}"
        return ", ".join(f"{what} ×{n}" for what, n in self.observed.most_common())

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "case": self.case,
            "variant": self.variant,
            "mode": self.mode,
            "expected": self.expected,
            "runs": self.runs,
            "matched": self.matched,
            "reproduced": self.reproduced,
            "failure": self.failure,
            "setup_errors": self.setup_errors,
            "recovered": self.recovered,
            "observed": dict(self.observed),
            "rate_per_100": self.rate,
            "per_minute": self.per_minute,
            "time_to_reproduce": stat(self.time_to_reproduce),
            "time_to_verdict": stat(self.time_to_verdict),
            "detection_latency": stat(self.detection_latency),
            "recovery": stat(self.recovery),
            "wall": self.wall,
            "first_reproduction_after": self.first_reproduction_after,
            "report_dirs": self.report_dirs,
            "problems": self.problems,
        }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def stat(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)
    return {
        "n": len(s),
        "median": statistics.median(s),
        "min": s[0],
        "max": s[-1],
        "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
    }


def summarize(results: Iterable[RunResult]) -> list[Summary]:
    out: dict[tuple[str, str, str, str], Summary] = {}
    for r in results:
        key = (r.scenario, r.case, r.variant, r.mode)
        s = out.get(key)
        if s is None:
            s = out[key] = Summary(r.scenario, r.seed, r.case, r.variant, r.mode, r.expected)
        s.runs += 1
        s.matched += r.matched
        s.observed[r.observed] += 1
        s.setup_errors += r.observed == SETUP_ERROR
        s.recovered += r.recovered
        s.wall += r.total_seconds
        if r.reproduced:
            s.reproduced += 1
            if r.time_to_verdict is not None:
                s.time_to_reproduce.append(r.time_to_verdict)
            if s.first_reproduction_after is None:
                s.first_reproduction_after = s.wall
        if r.time_to_verdict is not None:
            s.time_to_verdict.append(r.time_to_verdict)
        if r.detection_latency is not None:
            s.detection_latency.append(r.detection_latency)
        if r.recovery_seconds is not None:
            s.recovery.append(r.recovery_seconds)
        if r.report_dir:
            s.report_dirs.append(r.report_dir)
        if not r.matched:
            s.problems.append(
                f"run {r.iteration}: observed {r.observed}: "
                + "; ".join(r.problems or [r.error or r.summary])
            )
    return list(out.values())
