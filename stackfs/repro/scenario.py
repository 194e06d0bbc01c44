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
    :meth:`Scenario.verify`, in the union and in the branches);
``error:ENAME`` (made with :func:`error`)
    every workload process exited, and a real process saw errno ``ENAME`` (e.g. ``ENOENT``,
    ``ESTALE``): judged from its exit status and its C-locale error message, never from a flag.

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

# the outcomes, the variants' expectations among them: stackfs.repro.outcome (re-exported here
# for the scenarios)
from stackfs.repro.outcome import COMPLETES as COMPLETES
from stackfs.repro.outcome import DEADLOCK as DEADLOCK
from stackfs.repro.outcome import ERROR_PREFIX as ERROR_PREFIX
from stackfs.repro.outcome import EXPECTATIONS as EXPECTATIONS
from stackfs.repro.outcome import OOPS as OOPS
from stackfs.repro.outcome import error as error
from stackfs.repro.outcome import error_names as error_names
from stackfs.repro.outcome import valid_outcome as valid_outcome

if TYPE_CHECKING:
    from stackfs.repro.context import Run
    from stackfs.repro.workload import ProcResult


def forced_barrier(point: str, n: int, bound: float = 5.0) -> str:
    """``POINT=barrier:N:BOUND``, the injection that forces N requests into the race window
    together. ``bound`` only ends a round whose N-th party never comes, so it follows the
    machine's speed (times ``$STACKFS_TIMEOUT_FACTOR``: a TCG guest is five times slower)."""
    from stackfs.runtime.service import timeout_factor

    return f"{point}=barrier:{n}:{bound * timeout_factor():g}"


#: window modes
FORCED = "forced"
NATURAL = "natural"
#: natural mode's stack and workload with every injection point under the run's scheduler
#: (``stackfs explore``, ``stackfs repro run --schedule``): another client's change is a
#: scheduled task too, so the schedule decides where it lands
SCHEDULED = "scheduled"


@dataclass(frozen=True)
class Variant:
    """One variant of a scenario: which layers are buggy or fixed, and what must happen.

    ``params`` are the scenario's own knobs (e.g. ``{"afs": "buggy", "copyup": "aufs"}``); the
    scenario reads them in :meth:`Scenario.mount`. ``per_case`` overrides ``expect`` for the
    cases named in it, where the outcome depends on the workload (e.g. seed 002's buggy Lustre
    client: ``cat`` sees ENOENT, ``open(O_CREAT)`` completes); :meth:`expect_for` reads it.

    ``window`` is for a fix that *narrows the window* without closing it (the upstream fix
    itself still had the race, e.g. seed 003's 4.7-rc3 ``d_drop`` on every error): the bug's
    outcome (e.g. ``oops``) that some interleavings still show where the variant is expected to
    complete. A run with that outcome and the scenario's evidence for it matches, counted apart
    as *in the window* (``RunResult.in_window``; ``stackfs explore``, forced runs and natural
    batches all judge it so), and the docs quote the measured rate. :meth:`window_for` reads it.
    """

    name: str
    expect: str
    summary: str
    params: Mapping[str, str] = field(default_factory=dict)
    per_case: Mapping[str, str] = field(default_factory=dict)
    window: str | None = None

    def __post_init__(self) -> None:
        for outcome in (self.expect, *self.per_case.values()):
            if not valid_outcome(outcome):
                raise ValueError(
                    f"variant {self.name}: expect must be one of {EXPECTATIONS} "
                    f"or error('ENAME'), not {outcome!r}"
                )
        if self.window is not None and (self.window == COMPLETES or not valid_outcome(self.window)):
            raise ValueError(
                f"variant {self.name}: window must be a buggy outcome ({DEADLOCK}, {OOPS} "
                f"or error('ENAME')), not {self.window!r}"
            )

    def expect_for(self, case: str) -> str:
        """The outcome this variant must show in ``case``."""
        return self.per_case.get(case, self.expect)

    def window_for(self, case: str) -> str | None:
        """The buggy outcome the fix still allows in ``case`` (None: it closes the window)."""
        return self.window if self.expect_for(case) == COMPLETES else None

    def expect_text(self, case: str) -> str:
        """The expectation as a person reads it: ``completes (narrows the window: oops)``."""
        window = self.window_for(case)
        expect = self.expect_for(case)
        return f"{expect} (narrows the window: {window})" if window else expect

    def is_bug_in(self, case: str) -> bool:
        return self.expect_for(case) != COMPLETES

    @property
    def is_bug(self) -> bool:
        """Whether the variant is buggy in some case."""
        return self.expect != COMPLETES or any(e != COMPLETES for e in self.per_case.values())


@dataclass(frozen=True)
class History:
    """What one variant stands for in the kernel's (or the filesystem's) history: the versions
    whose code it models, the commit that made that code (None: the code before any fix), and
    the functions the model mirrors, so that a developer can check the mapping against the
    sources. A scenario declares one table of them, :attr:`Scenario.history`, which ``stackfs
    repro show`` prints."""

    kernels: str
    commit: str | None
    mirrors: tuple[str, ...]
    note: str = ""

    def __post_init__(self) -> None:
        if not self.kernels or not self.mirrors:
            raise ValueError("History: kernels and mirrors must not be empty")


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
class ServerAction:
    """What another client is to do to the server behind a backend while the workload runs
    (natural mode; done through the ``server`` control op). Not to be confused with
    :class:`backends.tables.ServerChange`, the backend's record of a change that was made."""

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
    #: variant name -> what it stands for (``stackfs repro show``): one entry per variant
    history: ClassVar[Mapping[str, History]] = {}
    #: old variant name -> its name now (a rename keeps the old name working, with a note)
    variant_aliases: ClassVar[Mapping[str, str]] = {}
    cases: ClassVar[tuple[Case, ...]] = (Case("default", ""),)
    #: seconds without progress before the watchdog calls a task hung
    threshold: ClassVar[float] = 1.0
    #: seconds a run may take before the runner stops waiting (then the watchdog looks once more)
    timeout: ClassVar[float] = 20.0
    #: natural mode: the other client's change lands at a uniformly random moment in
    #: [-window, +window] seconds around the start of the workload
    natural_window: ClassVar[float] = 0.02
    #: programs the workload and prepare steps run (checked on PATH before a run); a scenario
    #: that needs a kernel feature overrides :meth:`unsupported`
    requires: ClassVar[tuple[str, ...]] = ()

    # -- lookup ------------------------------------------------------------------------------

    @classmethod
    def variant(cls, name: str) -> Variant:
        name = cls.variant_aliases.get(name, name)
        for v in cls.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in cls.variants)
        raise KeyError(f"scenario {cls.name} has no variant {name!r} (known: {known})")

    @classmethod
    def alias_note(cls, name: str | None) -> str | None:
        """The note to show when ``name`` is an old name of a variant, else None."""
        if name is None or name not in cls.variant_aliases:
            return None
        return (
            f"{cls.name}: variant {name!r} is now called {cls.variant_aliases[name]!r} "
            "(the old name still works)"
        )

    @classmethod
    def case(cls, name: str) -> Case:
        for c in cls.cases:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in cls.cases)
        raise KeyError(f"scenario {cls.name} has no case {name!r} (known: {known})")

    @classmethod
    def unsupported(cls) -> str | None:
        """Why this scenario cannot run on this machine (a kernel feature or a tool is
        missing), or None. ``stackfs repro run`` then exits 4 (kselftest's skip) with it."""
        import shutil

        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing (modprobe fuse)"
        if os.geteuid() != 0:
            return "needs root (FUSE mounts, /proc stacks, the FUSE control filesystem)"
        missing = [p for p in cls.requires if shutil.which(p) is None]
        if missing:
            return f"tool(s) not installed: {', '.join(missing)}"
        return None

    # -- hooks -------------------------------------------------------------------------------

    def mount(self, run: Run) -> None:
        """Mount the stack bottom-up (``run.backend(...)``, then ``run.union(...)``)."""
        raise NotImplementedError

    def prepare(self, run: Run) -> None:
        """Bring the stack into the state the bug needs (before the workload starts)."""

    def workload(self, run: Run) -> list[Proc]:
        """The real processes to run, started together (in list order)."""
        raise NotImplementedError

    def concurrent(self, run: Run) -> list[ServerAction]:
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


#: the type of a factory the registry accepts
ScenarioFactory = Callable[[], Scenario]
