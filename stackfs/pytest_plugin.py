"""pytest plugin of stackfs (the ``pytest11`` entry point): fixtures for regression tests of
stacked and network filesystems, on real FUSE mounts (root and /dev/fuse needed).

A new regression test is about this long::

    import pytest
    from stackfs.pytest_plugin import assert_reproduces

    @pytest.mark.mount
    @pytest.mark.timeout(60)
    def test_copy_up_over_buggy_afs_deadlocks(stackfs_union_over, stackfs_watchdog):
        s = stackfs_union_over("afs", variant="buggy", copyup="aufs", files={"f": "v1\\n"})
        s.sh("cat", s.top / "f")                # the kernel caches the AFS file's pages
        s.server("write", "f", "v2\\n")          # another client: the data version moves
        outcome = stackfs_watchdog.run(["mv", s.top / "f", s.top / "g"])
        assert_reproduces(outcome, "deadlock", blocked="mv", lock_via="osi_VM_FlushPages")

Fixtures (every mount goes down after the test, whatever happened):

``stackfs_stack``
    a :class:`stackfs.repro.context.StackContext`: ``.backend(kind, variant=, files=, inject=,
    options=)`` and ``.union(lowers, copyup=, files=, options=)`` mount layers bottom-up and
    return a :class:`~stackfs.repro.context.Layer` (``.mnt``, ``.store``, ``.upper``, ``.mount``);
    ``.server(role, action, *args)`` is another client; ``.inject(role, point, action)``;
    ``.sh(argv)`` runs a prepare step as a real process.
``stackfs_backend``
    ``stackfs_backend("nfs", variant="buggy", files={...}, inject=[...], options=[...])``.
``stackfs_union``
    ``stackfs_union(lower, ..., copyup="aufs", files={...})`` over layers or directories.
``stackfs_union_over``
    ``stackfs_union_over("afs", variant=..., copyup=..., files=...)``: a backend, and the
    union over it with a fresh upper branch; ``.top`` is the union's mount point,
    ``.server(...)``/``.sh(...)`` as above.
``stackfs_watchdog``
    ``.run(argv, ..., timeout=, threshold=)`` starts real processes (argv lists or
    :class:`~stackfs.repro.scenario.Proc`) under the watchdog, waits for a verdict, recovers
    after a finding, and returns a :class:`WatchResult` (``observed``, a
    :class:`stackfs.repro.outcome.Outcome`: ``deadlock``, ``oops``, ``hang``,
    ``recursive_locking``, ``error:ENAME``, ``completes``...; ``report``: the watchdog's).
``stackfs_repro``
    ``stackfs_repro("aufs-afs-copyup", "buggy", case="mv")`` runs a registered scenario once
    (forced mode) and returns its :class:`~stackfs.repro.runner.RunResult`.

Assertions: :func:`assert_reproduces` (with evidence: ``blocked=COMM``, ``lock_via=FUNCTION``,
``oops_chain=[...]``) and :func:`assert_does_not_reproduce`. Markers, checked against the
test's last ``stackfs_watchdog.run``: ``@pytest.mark.reproduces("deadlock")`` and
``@pytest.mark.does_not_reproduce``.

On another kernel: ``pytest --stackfs-kernel 6.1 --stackfs-kernel 6.12 tests/test_mine.py`` runs
the selected tests inside ``stackfs vm`` on each kernel and reports them here
(:mod:`stackfs.vm.pytest_vm`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stackfs.repro.outcome import COMPLETES, DEADLOCK, Expected, Observed, Outcome, judge

if TYPE_CHECKING:
    from stackfs.repro.context import Layer, StackContext
    from stackfs.repro.runner import RunResult
    from stackfs.repro.workload import ProcResult

#: ``--stackfs-kernel K``: the selected tests run in a VM on kernel K (stackfs vm, issue 14)
pytest_plugins = ["stackfs.vm.pytest_vm"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reproduces(kind): the test's last stackfs_watchdog.run must observe KIND "
        "(deadlock, oops, hang, ...)",
    )
    config.addinivalue_line(
        "markers",
        "does_not_reproduce: the test's last stackfs_watchdog.run must complete (no finding, "
        "every process exited as expected)",
    )


# -- outcome and assertions --------------------------------------------------------------------


@dataclass
class WatchResult:
    """What a workload run under the watchdog came to: ``observed`` is judged from ``seen`` by
    :func:`stackfs.repro.outcome.judge`, the runner's verdict."""

    observed: Outcome
    verdict: str
    summary: str
    report: Any
    processes: list[ProcResult]
    time_to_verdict: float | None
    detection_latency: float | None
    recovered: bool | None
    report_dir: Path
    notes: list[str] = field(default_factory=list)
    #: what was seen (the watchdog's finding, the processes' exits), before recovery
    seen: Observed = field(default_factory=lambda: Observed(None))
    _json: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def json(self) -> dict[str, Any]:
        """The watchdog's report as JSON (hangs, cycle, events, daemons, ...)."""
        if self._json is None:
            self._json = self.report.to_json()
        return self._json

    def text(self) -> str:
        """The watchdog's report as the kernel would print it."""
        return str(self.report.text())

    def describe(self) -> str:
        lines = [f"observed {self.observed}: {self.summary}"]
        lines += [f"  {p.render()}" for p in self.processes]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  report: {self.report_dir}")
        return "\n".join(lines)


def _fail(outcome: WatchResult, why: str) -> None:
    from stackfs.repro.cli import excerpt

    key = "\n    ".join(excerpt(outcome.text())) if outcome.report is not None else ""
    raise AssertionError(f"{why}\n{outcome.describe()}" + (f"\n    {key}" if key else ""))


def assert_reproduces(
    outcome: WatchResult,
    kind: str = DEADLOCK,
    *,
    blocked: str | None = None,
    lock_via: str | None = None,
    oops_chain: Sequence[str] | None = None,
    oops_comms: Sequence[str] | None = None,
) -> None:
    """The bug happened: the watchdog's verdict is ``kind``, with the evidence asked for:
    a hung task named ``blocked``; a recursive lock whose call chain shows ``lock_via``; an
    oops whose racing tasks' chains contain ``oops_chain`` (outermost first), by tasks named
    in ``oops_comms``."""
    from stackfs.repro import evidence

    if not judge(outcome.seen, Expected(kind)).reproduced:
        _fail(outcome, f"expected the bug to reproduce as {kind}, observed {outcome.observed}")
    problems: list[str] = []
    if blocked is not None:
        problems += evidence.blocked_task(outcome.json, blocked)
    if lock_via is not None:
        problems += evidence.recursive_lock(outcome.json, via=lock_via)
    if oops_chain is not None:
        problems += evidence.oops(outcome.json, oops_chain, comms=oops_comms)
    if problems:
        _fail(outcome, f"{kind} observed, but the evidence is not there: " + "; ".join(problems))


def assert_does_not_reproduce(outcome: WatchResult) -> None:
    """Nothing found, and every process exited with the status it should."""
    if not judge(outcome.seen, Expected(COMPLETES)).matched:
        _fail(outcome, f"expected the workload to complete, observed {outcome.observed}")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def stackfs_stack(tmp_path: Path) -> Iterator[StackContext]:
    """Mount layers bottom-up; all of them go down after the test (hung ones are aborted)."""
    from stackfs.repro.context import StackContext
    from stackfs.runtime import lifecycle

    scratch = tmp_path / "stackfs"
    scratch.mkdir()
    with lifecycle.Stack(log_dir=tmp_path / "stackfs-logs") as st:
        yield StackContext(scratch, st)


@pytest.fixture
def stackfs_backend(stackfs_stack: StackContext) -> Callable[..., Layer]:
    """``stackfs_backend(kind, variant=None, files=None, inject=(), options=(), role=None)``."""
    return stackfs_stack.backend


@pytest.fixture
def stackfs_union(stackfs_stack: StackContext) -> Callable[..., Layer]:
    """``stackfs_union(*lowers, copyup=None, files=None, inject=(), options=())``."""

    def mount(*lowers: Layer | str | os.PathLike[str], **kw: Any) -> Layer:
        return stackfs_stack.union(list(lowers), **kw)

    return mount


@dataclass
class UnionOver:
    """A union with a fresh upper branch over one backend."""

    ctx: StackContext
    backend: Layer
    union: Layer

    @property
    def top(self) -> Path:
        """The union's mount point: where the workload runs."""
        return self.union.mnt

    @property
    def upper(self) -> Path:
        assert self.union.upper is not None
        return self.union.upper

    @property
    def store(self) -> Path:
        assert self.backend.store is not None
        return self.backend.store

    def server(self, action: str, *args: str) -> str:
        """Another client changes the backend's server."""
        return self.ctx.server(self.backend.role, action, *args)

    def sh(self, *argv: str | os.PathLike[str], timeout: float = 10.0) -> str:
        """Run a command as a real process; its stdout."""
        return self.ctx.sh(list(argv), timeout=timeout).stdout.decode(errors="replace")


@pytest.fixture
def stackfs_union_over(stackfs_stack: StackContext) -> Callable[..., UnionOver]:
    """``stackfs_union_over(kind, variant=None, copyup=None, files=None, inject=(),
    options=(), union_options=())``: a backend and the union over it."""

    def mount(
        kind: str,
        *,
        variant: str | None = None,
        copyup: str | None = None,
        files: Mapping[str, bytes | str] | None = None,
        inject: Sequence[str] = (),
        options: Sequence[str] = (),
        union_options: Sequence[str] = (),
        union_inject: Sequence[str] = (),
    ) -> UnionOver:
        b = stackfs_stack.backend(
            kind, variant=variant, files=files, inject=inject, options=options
        )
        u = stackfs_stack.union([b], copyup=copyup, options=union_options, inject=union_inject)
        return UnionOver(stackfs_stack, b, u)

    return mount


class Watcher:
    """Runs workloads under the watchdog over every layer of the test's stack."""

    def __init__(self, ctx: StackContext, out_dir: Path) -> None:
        self.ctx = ctx
        self.out_dir = out_dir
        self.outcomes: list[WatchResult] = []

    @property
    def last(self) -> WatchResult | None:
        return self.outcomes[-1] if self.outcomes else None

    def run(
        self,
        *commands: Sequence[str | os.PathLike[str]] | Any,
        timeout: float = 20.0,
        threshold: float | None = None,
        ok_status: tuple[int, ...] = (0,),
        mounts: Sequence[str | os.PathLike[str]] | None = None,
    ) -> WatchResult:
        """Start ``commands`` together, watch until a verdict, recover after a finding.

        ``threshold`` (hung-task) and ``timeout`` default to 1 s and 20 s times
        ``$STACKFS_TIMEOUT_FACTOR``; an explicit ``threshold`` is used as given. The processes
        run in the stack's cgroup and the watchdog sees only the test's stack (issue 24)."""
        from stackfs.repro.observe import machine_threshold, machine_timeout, observe, recover_run
        from stackfs.repro.scenario import Proc

        specs = [c if isinstance(c, Proc) else Proc(list(c), ok_status=ok_status) for c in commands]
        out = self.out_dir / f"run-{len(self.outcomes) + 1}"
        obs = observe(
            mounts or self.ctx.mountpoints(),
            specs,
            out_dir=out / "workload",
            threshold=machine_threshold(threshold),
            timeout=machine_timeout(timeout),
            stack=self.ctx.stack,
        )
        seen = obs.seen()  # before recovery kills what is left, as the runner judges
        recover_run(
            obs,
            own_conns=[layer.mount.conn for layer in self.ctx.layers.values()],
            own_pids=[layer.mount.pid for layer in self.ctx.layers.values()],
        )
        rec = obs.recovery
        outcome = WatchResult(
            observed=judge(seen, Expected(COMPLETES)).observed,
            verdict=obs.verdict,
            summary=obs.report.summary,
            report=obs.report,
            processes=list(obs.workload.results),
            time_to_verdict=obs.time_to_verdict,
            detection_latency=obs.report.latency if obs.finding else None,
            recovered=(rec.ok and not any(r.status is None for r in obs.workload.results))
            if rec is not None
            else None,
            report_dir=out,
            notes=obs.notes,
            seen=seen,
        )
        obs.report.write(out, picture=obs.finding)
        self.outcomes.append(outcome)
        return outcome


@pytest.fixture
def stackfs_watchdog(stackfs_stack: StackContext, tmp_path: Path) -> Watcher:
    """``stackfs_watchdog.run(argv, ...)`` -> :class:`WatchResult` (reports in tmp_path)."""
    return Watcher(stackfs_stack, tmp_path / "stackfs-reports")


@pytest.fixture
def stackfs_repro(tmp_path: Path) -> Callable[..., RunResult]:
    """``stackfs_repro(name, variant, case=None, natural=False)``: one run of a registered
    scenario, reports under tmp_path; the stack is down when it returns. A run is repeated (up
    to 3 attempts) only on evidence that another process aborted its connection (a daemon of
    the run exited with ``EXIT_CONNECTION_ABORTED``, see :func:`stackfs.repro.runner.disturbed`);
    a crash of the run's own daemon fails the run."""
    from stackfs.repro import registry, runner
    from stackfs.repro.scenario import FORCED, NATURAL

    def run(
        name: str,
        variant: str,
        case: str | None = None,
        natural: bool = False,
        threshold: float | None = None,
    ) -> RunResult:
        return runner.run_with_retries(
            registry.get(name),
            variant,
            case,
            mode=NATURAL if natural else FORCED,
            report_root=tmp_path / "stackfs-reports",
            threshold=threshold,
        )

    return run


# -- markers ------------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    want = item.get_closest_marker("reproduces")
    complete = item.get_closest_marker("does_not_reproduce")
    if want is None and complete is None:
        return result
    watcher = getattr(item, "funcargs", {}).get("stackfs_watchdog")
    if not isinstance(watcher, Watcher) or watcher.last is None:
        raise AssertionError(
            "@pytest.mark.reproduces / does_not_reproduce need a "
            "stackfs_watchdog.run(...) in the test"
        )
    if want is not None:
        assert_reproduces(watcher.last, *(want.args or (DEADLOCK,)), **want.kwargs)
    if complete is not None:
        assert_does_not_reproduce(watcher.last)
    return result
