"""The outcome of a run and the one verdict on it: :class:`Outcome`, :func:`judge`.

Every caller that asks "what happened, and is that what the variant should do?" asks here: the
runner (``stackfs repro run``, ``stackfs demo``), the explorer, the pytest plugin, the JUnit and
KTAP writers and the batch statistics. What a run *observed* is read off what was seen
(:class:`Observed`: the watchdog's finding, whether every process exited, the processes that
failed and the errno each saw, what the scenario's checks found wrong), never off a flag; it is
then compared with the expectation (:class:`Expected`: the variant's outcome in the case, the
window a fix that only narrows it leaves, and whether the mode measures a rate).

An outcome is one of:

``deadlock``, ``oops`` (or another watchdog verdict, e.g. ``hang``)
    the watchdog found something about the stack;
``completes``
    every process exited as it should and the data is right;
``error:ENAME[,ENAME...]`` (:func:`error`)
    every process exited and a real process saw errno ENAME (its C-locale message, its status);
``wrong-result``
    every process exited, no errno, but an exit status or the data is wrong;
``still-running``
    no finding, and a process had not exited when the runner stopped waiting;
``setup-error``
    the stack could not be mounted or prepared: nothing was observed.

A variant may expect ``deadlock``, ``oops``, ``completes`` or an ``error:`` outcome
(:func:`valid_outcome`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Outcome(str):
    """An outcome's name (see the module docstring). A ``str``, so that result files, schedule
    files and the reports carry it as the text they always did."""

    __slots__ = ()

    @property
    def errnos(self) -> frozenset[str]:
        """The errno names of an ``error:`` outcome (empty for any other)."""
        return error_names(self)

    @property
    def is_bug(self) -> bool:
        """Whether this outcome, expected, is a bug's (anything but ``completes``)."""
        return self != COMPLETES


DEADLOCK = Outcome("deadlock")
OOPS = Outcome("oops")
COMPLETES = Outcome("completes")
WRONG_RESULT = Outcome("wrong-result")
STILL_RUNNING = Outcome("still-running")
SETUP_ERROR = Outcome("setup-error")
#: what a variant may expect (besides an ``error:`` outcome)
EXPECTATIONS = (DEADLOCK, OOPS, COMPLETES)
#: prefix of the outcome "a real process saw this errno" (see :func:`error`)
ERROR_PREFIX = "error:"


def error(*names: str) -> Outcome:
    """The outcome "a real process saw errno NAME": ``error("ENOENT") == "error:ENOENT"``.

    Several names (sorted, comma-separated) mean that processes saw each of them."""
    bad = [n for n in names if not isinstance(getattr(errno, n, None), int)]
    if not names or bad:
        raise ValueError(f"error(): not errno names: {bad or names}")
    return Outcome(ERROR_PREFIX + ",".join(sorted(set(names))))


def error_names(outcome: str) -> frozenset[str]:
    """The errno names of an ``error:...`` outcome (empty for any other outcome)."""
    if not outcome.startswith(ERROR_PREFIX):
        return frozenset()
    return frozenset(outcome[len(ERROR_PREFIX) :].split(","))


def valid_outcome(outcome: str) -> bool:
    """Whether a variant may expect ``outcome``."""
    if outcome in EXPECTATIONS:
        return True
    names = error_names(outcome)
    return bool(names) and all(isinstance(getattr(errno, n, None), int) for n in names)


# -- what was seen, what was expected -------------------------------------------------------------


class _Process(Protocol):
    """What :class:`Failure` reads of a workload process (:class:`~stackfs.repro.workload.
    ProcResult`)."""

    @property
    def ok(self) -> bool: ...
    @property
    def errno(self) -> int | None: ...
    @property
    def ok_status(self) -> tuple[int, ...] | None: ...
    def render(self) -> str: ...


@dataclass(frozen=True)
class Failure:
    """A workload process that did not exit as it should: the errno it saw (by name, None when
    neither its message nor its status names one) and how a report says it."""

    errname: str | None
    text: str

    @classmethod
    def of(cls, proc: _Process) -> Failure:
        expected = " or ".join(map(str, proc.ok_status or ()))
        return cls(
            errno.errorcode.get(proc.errno or 0), f"{proc.render()}, expected exit {expected}"
        )


def failures(procs: Iterable[_Process]) -> tuple[Failure, ...]:
    """The processes of ``procs`` that did not exit as they should."""
    return tuple(Failure.of(p) for p in procs if not p.ok)


@dataclass(frozen=True)
class Observed:
    """What a run saw.

    ``finding``: the watchdog's verdict when it found something about the stack (None when it
    did not); ``exited``: every workload process exited; ``failed``: those that did not exit
    as they should (looked at only when there was no finding and every process exited);
    ``problems``: what the scenario's checks found wrong (the evidence of a finding, the data
    of a run that completed); ``schedule_error``: a replayed schedule that could not be
    followed; ``recovered``: nothing of the run was left (``recovery_notes`` say what was)."""

    finding: str | None
    exited: bool = True
    failed: tuple[Failure, ...] = ()
    problems: tuple[str, ...] = ()
    schedule_error: str | None = None
    recovered: bool = True
    recovery_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expected:
    """What a run must show: ``outcome``; ``window``, the bug's outcome a fix that narrows the
    window still allows (:meth:`stackfs.repro.scenario.Variant.window_for`); ``rate``: the
    mode measures how often the bug happens (natural mode), so a buggy variant's run that
    completed correctly matches too."""

    outcome: str
    window: str | None = None
    rate: bool = False

    @property
    def explained_errors(self) -> frozenset[str]:
        """The errno names a real process may see: the expectation's and the window's."""
        return error_names(self.outcome) | error_names(self.window or "")


#: the kinds of a run (:attr:`Judgement.kind`): the variant's bug with its evidence; completed
#: with the right data; the bug's outcome a fix that narrows the window allows (it matches,
#: counted apart); anything else
BUG = "bug"
OK = COMPLETES
WINDOW = "window"
OTHER = "other"


@dataclass(frozen=True)
class Judgement:
    """The verdict on one run: what it observed, whether that matches, and why not."""

    observed: Outcome
    #: the outcome it was judged against (:attr:`Expected.outcome`)
    expected: str
    #: errno names the workload's processes failed with (sorted)
    errors: tuple[str, ...]
    #: what the observation shows wrong: the checks' problems, failures the expectation does
    #: not explain
    found: tuple[str, ...]
    #: what is wrong: ``found``, then a schedule that could not be followed and an incomplete
    #: recovery
    problems: tuple[str, ...]
    matched: bool
    #: the variant's bug happened (its buggy outcome observed)
    reproduced: bool
    #: the window a fix leaves, with its evidence: matches, counted apart
    in_window: bool

    @property
    def kind(self) -> str:
        """:func:`kind` of this run."""
        return kind(self.observed, self.expected, self.problems, self.in_window)


def _observe(seen: Observed, explained: frozenset[str]) -> tuple[Outcome, list[str], list[str]]:
    """The observed outcome, the errno names seen, and the problems it was judged with."""
    if seen.finding is not None:
        return Outcome(seen.finding), [], list(seen.problems)
    if not seen.exited:
        return STILL_RUNNING, [], list(seen.problems)
    errors = sorted({f.errname for f in seen.failed if f.errname is not None})
    problems = [f.text for f in seen.failed if f.errname is None or f.errname not in explained]
    problems += seen.problems
    if errors:  # a real process saw an errno: that is the outcome, whatever was expected
        return error(*errors), errors, problems
    return (WRONG_RESULT if problems else COMPLETES), errors, problems


def judge(seen: Observed, expected: Expected) -> Judgement:
    """The one verdict: what ``seen`` observed, compared with ``expected``.

    It matches when it is the expected outcome with nothing wrong; under a rate (natural mode)
    a buggy variant's run that completed correctly matches too; a fix that narrows the window
    matches with the window's outcome and its evidence (``in_window``); never when something
    of the run was left behind."""
    observed, errors, found = _observe(seen, expected.explained_errors)
    problems = list(found)
    if seen.schedule_error:
        problems.append(f"schedule: {seen.schedule_error}")
    want = expected.outcome
    matched = observed == want and not problems
    if expected.rate and want != COMPLETES:
        matched = matched or (observed == COMPLETES and not problems)
    in_window = expected.window is not None and observed == expected.window and not problems
    matched = matched or in_window
    if not seen.recovered:
        matched = False
        problems.append(
            "recovery incomplete: "
            + "; ".join(n for n in seen.recovery_notes if not n.startswith("unmount "))
        )
    return Judgement(
        observed,
        want,
        tuple(errors),
        tuple(found),
        tuple(problems),
        matched,
        reproduced=want != COMPLETES and observed == want,
        in_window=in_window,
    )


def kind(observed: str, expected: str, problems: Iterable[str], in_window: bool) -> str:
    """``bug``, ``completes``, ``window`` or ``other`` (:data:`BUG` ...): read off what a run
    observed and what is wrong with it, never off whether it matched. A run is ``bug`` only
    when it showed the variant's buggy outcome with nothing wrong, ``completes`` only when it
    completed with nothing wrong, ``window`` when a fix that only narrows the window showed
    the bug's outcome it allows (with the evidence, nothing wrong)."""
    if in_window:
        return WINDOW
    wrong = any(True for _ in problems)
    if expected != COMPLETES and observed == expected and not wrong:
        return BUG
    if observed == COMPLETES and not wrong:
        return OK
    return OTHER


#: a run's status for the harnesses (JUnit, KTAP, the exit status)
PASS = "pass"
FAIL = "fail"
ERROR = "error"
SKIP = "skip"


def status(observed: str, matched: bool) -> str:
    """:data:`ERROR` when nothing could be observed (a set-up error), else :data:`PASS` when
    the run matched its expectation, :data:`FAIL` when not."""
    if observed == SETUP_ERROR:
        return ERROR
    return PASS if matched else FAIL
