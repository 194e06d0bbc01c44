"""Aggregate runs per scenario/case/variant: how often, how fast, how well recovered.

Each run is one of three kinds (:func:`classify`): the variant's bug (``bug``: its buggy
outcome, with the evidence that tells it from another bug), ``completes`` (every process exited
as it should and the data is right) or ``other`` (anything else: a hang or an oops where none or
another was expected, a wrong result, an errno the variant does not explain, a run still going
at the end, a set-up error, an incomplete recovery). A fix that only narrows the window
(``Variant.window``) has a fourth kind, ``window``: the bug's outcome it allows, with its
evidence; such a run matches and is counted apart (W), its rate the window the fix leaves.
``stackfs explore`` judges its schedules by the same kinds.

A natural batch (one variant in one case, N runs) reports N = R reproduced + C completed + O
other, each other outcome named and counted, and its verdict (:attr:`Summary.failure`): a buggy
variant's batch matches when R >= 1 and O = 0 (the rate is R/N); a fixed variant's batch fails
on any run that did not complete correctly (O > 0). A forced or scheduled batch matches when
every run matched its expectation exactly.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stackfs.repro.outcome import BUG as BUG
from stackfs.repro.outcome import COMPLETES, OK, OTHER, SETUP_ERROR, WINDOW, kind
from stackfs.repro.runner import RunResult
from stackfs.repro.scenario import NATURAL


def classify(r: RunResult) -> str:
    """``bug``, ``completes``, ``window`` or ``other`` (see the module docstring): the
    :func:`~stackfs.repro.outcome.kind` of what the run observed and what is wrong with it
    (``problems``: missing evidence, wrong data, unexpected errors, an incomplete recovery, a
    schedule that could not be followed), never of ``matched``."""
    return kind(r.observed, r.expected, r.problems, r.in_window)


def other_name(r: RunResult) -> str:
    """How a batch names an ``other`` run: its observed outcome, and when that is the expected
    one (or ``completes``) what made it other."""
    if r.observed not in (r.expected, COMPLETES) or not r.problems:
        return r.observed
    if any(p.startswith("recovery incomplete") for p in r.problems):
        return f"{r.observed}, recovery incomplete"
    return f"{r.observed} with problems"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Summary:
    """The runs of one scenario (case) in one variant and mode."""

    scenario: str
    seed: str
    case: str
    variant: str
    mode: str
    expected: str
    #: the buggy outcome a fix that narrows the window still allows (``Variant.window``)
    window: str | None = None
    runs: int = 0
    matched: int = 0
    #: runs that showed the variant's bug with its evidence (kind ``bug``)
    reproduced: int = 0
    #: runs that completed with the right data (kind ``completes``)
    completed: int = 0
    #: runs of a fix that narrows the window that showed the bug's outcome it allows (kind
    #: ``window``): they match; their rate is the window the fix leaves
    in_window: int = 0
    #: the other runs, by outcome (:func:`other_name`)
    others: Counter[str] = field(default_factory=Counter)
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
        return self.expected != COMPLETES

    @property
    def all_matched(self) -> bool:
        return self.runs > 0 and self.matched == self.runs

    @property
    def other(self) -> int:
        """Runs that neither reproduced the bug nor completed correctly."""
        return sum(self.others.values())

    def others_text(self) -> str:
        return ", ".join(f"{what} ×{n}" for what, n in sorted(self.others.items()))

    def counts_text(self) -> str:
        """``N runs: R reproduced the bug (deadlock), C completed, O other (wrong-result ×1)``."""
        text = f"{plural(self.runs, 'run')}: "
        if self.is_bug:
            text += f"{self.reproduced} reproduced the bug ({self.expected}), "
        text += f"{self.completed} completed, "
        if self.in_window:
            text += f"{self.in_window} in the window the fix leaves ({self.window}), "
        text += f"{self.other} other"
        return text + (f" ({self.others_text()})" if self.other else "")

    @property
    def failure(self) -> str | None:
        """Why these runs, taken together, fail their variant (None: they do not).

        Forced and scheduled runs: each run must match its expectation. A natural batch: a run
        of a buggy variant may show the bug or complete correctly (natural mode measures a
        rate), but the batch fails when any run did something else (a wrong result, another
        hang, an unexpected errno) or when the bug never reproduced (0/N shows nothing about
        the bug); a fixed variant's batch fails on any run that did not complete correctly.
        """
        if self.runs == 0:
            return "no runs"
        if self.mode != NATURAL:
            if self.matched < self.runs:
                return f"{self.runs - self.matched} of {self.runs} runs did not match"
            return None
        if self.other:
            what = (
                "neither reproduced the bug nor completed correctly"
                if self.is_bug
                else "did not complete correctly"
            )
            return f"{self.other} of {self.runs} runs {what}: {self.others_text()}"
        if self.matched < self.runs:
            return f"{self.runs - self.matched} of {self.runs} runs did not match"
        if self.is_bug and self.reproduced == 0:
            return (
                f"the bug never reproduced in {plural(self.runs, 'natural run')} (0/100): "
                f"nothing shows the {self.variant} variant has it"
            )
        return None

    def verdict(self) -> str:
        """One line: the counts, then ``matches`` (with the rate) or ``DOES NOT MATCH: why``."""
        if self.failure is not None:
            return f"{self.counts_text()} -> DOES NOT MATCH: {self.failure}"
        rate = ""
        if self.mode == NATURAL and self.is_bug and self.rate is not None:
            rate = f", rate {self.reproduced}/{self.runs} ({self.rate:.0f}/100)"
        elif self.window and self.window_rate is not None:
            rate = f", in the window {self.in_window}/{self.runs} ({self.window_rate:.0f}/100)"
        return f"{self.counts_text()} -> matches{rate}"

    @property
    def rate(self) -> float | None:
        """Reproductions per 100 runs."""
        return 100.0 * self.reproduced / self.runs if self.runs else None

    @property
    def window_rate(self) -> float | None:
        """Runs in the window a fix leaves (kind ``window``) per 100 runs."""
        return 100.0 * self.in_window / self.runs if self.runs else None

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
            "completed": self.completed,
            "window": self.window,
            "in_window": self.in_window,
            "other": self.other,
            "others": dict(self.others),
            "failure": self.failure,
            "verdict": self.verdict(),
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
        kind = classify(r)
        s.completed += kind == OK
        s.in_window += kind == WINDOW
        s.window = s.window or r.window
        if kind == OTHER:
            s.others[other_name(r)] += 1
        s.observed[r.observed] += 1
        s.setup_errors += r.observed == SETUP_ERROR
        s.recovered += r.recovered
        s.wall += r.total_seconds
        if kind == BUG:
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
