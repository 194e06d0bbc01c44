"""What a reproducer is: a :class:`Scenario` with its :class:`Variant` s and :class:`Case` s.

A scenario names its seed, mounts a stack (bottom-up: the backend(s), then the union), prepares
the state the bug needs, runs a workload of real processes (``mv``, ``cat``, ``ls``,
``sh -c 'echo >> f'``) and says, per variant, what must be observed:

``deadlock``
    the watchdog finds hung tasks and a cycle in the wait-for graph;
``oops``
    a layer's modelled kernel records a failed assertion (``BUG_ON``);
``completes``
    every workload process exits as it should and the data is right (checked by
    :meth:`Scenario.verify`, in the union and in the branches).

How the race window is opened (:data:`FORCED` or :data:`NATURAL`) is the scenario's business:
forced mode sets injection points (barriers) so that the interleaving happens on the first try;
natural mode forces nothing, lets another client change the server concurrently at a random
moment (:meth:`Scenario.concurrent`) and only widens windows with small delays, so the runner can
measure how often it happens.

The outcome is always *observed* (the watchdog's verdict, the processes' exit statuses, the
data), never decided by a flag; :meth:`Scenario.evidence` adds the checks that tell this bug from
any other (e.g. the recursive lock on the AFS inode and the blocked ``mv`` for seed 000).

A new scenario is a short module in :mod:`stackfs.repro.scenarios` that subclasses
:class:`Scenario` and decorates it with :func:`stackfs.repro.registry.register`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from stackfs.repro.context import Run
    from stackfs.repro.workload import ProcResult

#: expected / observed outcomes
DEADLOCK = "deadlock"
OOPS = "oops"
COMPLETES = "completes"
EXPECTATIONS = (DEADLOCK, OOPS, COMPLETES)

#: window modes
FORCED = "forced"
NATURAL = "natural"


@dataclass(frozen=True)
class Variant:
    """One variant of a scenario: which layers are buggy or fixed, and what must happen.

    ``params`` are the scenario's own knobs (e.g. ``{"afs": "buggy", "copyup": "aufs"}``); the
    scenario reads them in :meth:`Scenario.mount`.
    """

    name: str
    expect: str
    summary: str
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"variant {self.name}: expect must be one of {EXPECTATIONS}")

    @property
    def is_bug(self) -> bool:
        return self.expect != COMPLETES


@dataclass(frozen=True)
class Case:
    """One form of the workload or of the stack (each runs on a stack of its own)."""

    name: str
    summary: str


@dataclass
class Proc:
    """A workload process: a real command line, started by the runner.

    ``ok_status``: exit statuses that are correct when the variant must complete (``None``: any).
    ``label``: how reports name it (default: the command and its last argument).
    """

    argv: Sequence[str | os.PathLike[str]]
    label: str | None = None
    ok_status: tuple[int, ...] | None = (0,)
    cwd: str | os.PathLike[str] | None = None
    #: start this many seconds after the previous process (natural mode jitter)
    delay: float = 0.0

    def command(self) -> list[str]:
        return [os.fspath(a) for a in self.argv]

    def name(self) -> str:
        if self.label:
            return self.label
        cmd = self.command()
        return " ".join(os.path.basename(c) if i else c for i, c in enumerate(cmd))


@dataclass
class ServerChange:
    """Another client changes the server behind a backend (the ``server`` control op)."""

    role: str
    action: str
    args: tuple[str, ...]

    def describe(self) -> str:
        return f"stackfs server <{self.role}> {self.action} {' '.join(self.args)}"


class Scenario:
    """Base class of a reproducer. Subclasses set the class attributes and override the hooks.

    Hooks get a :class:`stackfs.repro.context.Run`: the iteration's variant, case and mode, its
    directories, its stack (``run.backend(...)``, ``run.union(...)``), ``run.server(...)`` and
    ``run.note(...)`` (what was done, for the report).
    """

    #: ``stackfs repro run NAME``
    name: ClassVar[str]
    #: the seed in shared/seeds (e.g. ``"000"``)
    seed: ClassVar[str]
    #: one line for ``stackfs repro list`` and the demo
    summary: ClassVar[str]
    #: a paragraph: the stack, the workload, what the kernel/daemons do, what the variants change
    description: ClassVar[str]
    variants: ClassVar[tuple[Variant, ...]]
    cases: ClassVar[tuple[Case, ...]] = (Case("default", ""),)
    #: seconds without progress before the watchdog calls a task hung
    threshold: ClassVar[float] = 1.0
    #: seconds a run may take before the runner stops waiting (then the watchdog looks once more)
    timeout: ClassVar[float] = 20.0
    #: natural mode: the other client's change lands at a uniformly random moment in
    #: [-window, +window] seconds around the start of the workload
    natural_window: ClassVar[float] = 0.02

    # -- lookup ------------------------------------------------------------------------------

    @classmethod
    def variant(cls, name: str) -> Variant:
        for v in cls.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in cls.variants)
        raise KeyError(f"scenario {cls.name} has no variant {name!r} (known: {known})")

    @classmethod
    def case(cls, name: str) -> Case:
        for c in cls.cases:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in cls.cases)
        raise KeyError(f"scenario {cls.name} has no case {name!r} (known: {known})")

    # -- hooks -------------------------------------------------------------------------------

    def mount(self, run: Run) -> None:
        """Mount the stack bottom-up (``run.backend(...)``, then ``run.union(...)``)."""
        raise NotImplementedError

    def prepare(self, run: Run) -> None:
        """Bring the stack into the state the bug needs (before the workload starts)."""

    def workload(self, run: Run) -> list[Proc]:
        """The real processes to run, started together (in list order)."""
        raise NotImplementedError

    def concurrent(self, run: Run) -> list[ServerChange]:
        """Natural mode: what another client changes on the server while the workload runs."""
        return []

    def verify(self, run: Run, results: list[ProcResult]) -> list[str]:
        """After every process exited: what is wrong with their output and the data (empty if
        nothing). Called for every run that did not end in a finding."""
        return []

    def evidence(self, run: Run, report: dict[str, Any]) -> list[str]:
        """For a finding (the report's JSON form): what is missing from the evidence that tells
        this bug from another (empty if it is all there)."""
        return []

    # -- presentation ------------------------------------------------------------------------

    @classmethod
    def row_name(cls, case: Case) -> str:
        return cls.name if len(cls.cases) == 1 else f"{cls.name} ({case.name})"


#: the type of a factory the registry accepts
ScenarioFactory = Callable[[], Scenario]
