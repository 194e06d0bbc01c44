"""The context a scenario's hooks get: a stack to mount, a server to change, notes to keep.

:class:`StackContext` owns a scratch directory (stores, branches, mount points) and a
:class:`stackfs.runtime.lifecycle.Stack`, so every mount it makes goes down with the stack and
``stackfs cleanup --run-id`` finds only its own. It mounts layers bottom-up with
:meth:`StackContext.backend` and :meth:`StackContext.union`, acts as another client with
:meth:`StackContext.server`, runs prepare steps as real processes with :meth:`StackContext.sh`,
and keeps what was done with :meth:`StackContext.note`. :class:`Run` adds the scenario, variant,
case and mode of one run; the pytest plugin's fixtures use a plain :class:`StackContext`.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackfs.repro import stacks
from stackfs.repro.scenario import FORCED, Case, Scenario, Variant
from stackfs.repro.workload import workload_env
from stackfs.runtime import control, lifecycle
from stackfs.runtime import service as service_mod

PathLike = str | os.PathLike[str]


class SetupError(Exception):
    """The stack could not be mounted or prepared: not an outcome, a broken set-up."""


@dataclass
class Layer:
    """A mounted layer of the run's stack."""

    role: str
    kind: str
    mount: lifecycle.Mount
    variant: str | None = None
    #: a backend's store (the server's directory)
    store: Path | None = None
    #: a union's upper branch
    upper: Path | None = None
    lowers: list[Path] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    @property
    def mnt(self) -> Path:
        return self.mount.mountpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "kind": self.kind,
            "variant": self.variant,
            "mountpoint": str(self.mnt),
            "daemon": self.mount.pid,
            "conn": self.mount.conn,
            "store": str(self.store) if self.store else None,
            "upper": str(self.upper) if self.upper else None,
            "lowers": [str(p) for p in self.lowers],
            "options": self.options,
        }


def write_files(root: Path, files: Mapping[str, bytes | str]) -> None:
    """Create ``files`` (relative path -> content) under ``root``."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)


class StackContext:
    """A scratch directory and a :class:`~stackfs.runtime.lifecycle.Stack`: mount layers bottom-up,
    act on them as another client, run prepare steps as real processes.

    The reproducers' :class:`Run` and the pytest plugin's fixtures are both one of these.
    """

    def __init__(self, scratch: Path, stack: lifecycle.Stack) -> None:
        self.scratch = scratch
        self.stack = stack
        self.layers: dict[str, Layer] = {}
        #: service daemons of the stack (kind -> service), e.g. the cluster's lock manager
        self.services: dict[str, service_mod.Service] = {}
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """Say what was done (shown in the report, in order)."""
        self.notes.append(text)

    def path(self, *parts: str) -> Path:
        return self.scratch.joinpath(*parts)

    def dir(self, name: str) -> Path:
        d = self.scratch / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- the stack ---------------------------------------------------------------------------

    def _mount(self, argv: list[str], mp: Path) -> lifecycle.Mount:
        try:
            return self.stack.mount(argv, mp)
        except lifecycle.MountError as exc:
            raise SetupError(str(exc)) from exc

    def backend(
        self,
        kind: str,
        *,
        role: str | None = None,
        variant: str | None = None,
        files: Mapping[str, bytes | str] | None = None,
        inject: Iterable[str] = (),
        options: Iterable[str] = (),
        store_of: Layer | None = None,
    ) -> Layer:
        """Mount backend ``kind`` over a fresh store holding ``files``; with ``store_of``, over
        that layer's store instead: a second client mount of the same server (its own daemon),
        as a cluster filesystem's second node sees it."""
        role = role or kind
        if store_of is None:
            store = self.dir(f"{role}-store")
        elif store_of.store is None:
            raise SetupError(f"layer {store_of.role} has no store to share")
        else:
            store = store_of.store
        mp = self.dir(role)
        if files:
            write_files(store, files)
        inject, options = list(inject), list(options)
        m = self._mount(
            stacks.backend_argv(kind, store, mp, variant=variant, inject=inject, options=options),
            mp,
        )
        layer = Layer(
            role, kind, m, variant, store=store, options=options + [f"inject={s}" for s in inject]
        )
        self.layers[role] = layer
        return layer

    def union(
        self,
        lowers: Sequence[Layer | PathLike],
        *,
        role: str = "union",
        upper: PathLike | None = None,
        copyup: str | None = None,
        inject: Iterable[str] = (),
        options: Iterable[str] = (),
        files: Mapping[str, bytes | str] | None = None,
    ) -> Layer:
        """Mount the union: a fresh upper branch (holding ``files``) over ``lowers``."""
        up = Path(upper) if upper is not None else self.dir(f"{role}-upper")
        if files:
            write_files(up, files)
        low = [lo.mnt if isinstance(lo, Layer) else Path(lo) for lo in lowers]
        mp = self.dir(role)
        inject, options = list(inject), list(options)
        m = self._mount(
            stacks.union_argv(up, low, mp, copyup=copyup, inject=inject, options=options), mp
        )
        opts = ([f"copyup={copyup}"] if copyup else []) + options + [f"inject={s}" for s in inject]
        layer = Layer(role, "union", m, copyup, upper=up, lowers=low, options=opts)
        self.layers[role] = layer
        return layer

    def layer(self, role: str) -> Layer:
        return self.layers[role]

    def service(self, kind: str, argv: Sequence[str]) -> service_mod.Service:
        """Start a service daemon with the stack (a lock manager: ``backends.dlmd``); it goes
        down after the mounts, and ``stackfs cleanup --run-id`` finds it after a SIGKILL."""
        try:
            svc = self.stack.service(list(argv), kind)
        except service_mod.ServiceError as exc:
            raise SetupError(str(exc)) from exc
        self.services[kind] = svc
        return svc

    def mountpoints(self) -> list[str]:
        return [str(layer.mnt) for layer in self.layers.values()]

    # -- acting on it ------------------------------------------------------------------------

    def server(self, role: str, action: str, *args: str) -> str:
        """Another client changes the server behind backend ``role`` (``stackfs server``)."""
        layer = self.layers[role]
        try:
            reply = control.query(layer.mnt, {"op": "server", "action": action, "args": list(args)})
        except control.ControlError as exc:
            raise SetupError(f"stackfs server {layer.mnt} {action}: {exc}") from exc
        return str(reply.get("message") or f"{action} {' '.join(args)}")

    def inject(self, role: str, point: str, action: str) -> None:
        """Set an injection point of layer ``role`` while mounted (``stackfs inject``)."""
        try:
            control.query(self.layers[role].mnt, {"op": "inject", "point": point, "action": action})
        except control.ControlError as exc:
            raise SetupError(f"stackfs inject {role} {point} {action}: {exc}") from exc

    def sh(
        self, argv: Sequence[PathLike], timeout: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a prepare step as a real process; a hang or a failure is a set-up error.
        ``timeout`` is multiplied by ``$STACKFS_TIMEOUT_FACTOR`` (a slow machine)."""
        cmd = [os.fspath(a) for a in argv]
        timeout *= service_mod.timeout_factor()
        try:
            res = subprocess.run(
                cmd,
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=workload_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise SetupError(f"prepare step {' '.join(cmd)} hung for {timeout:g} s") from exc
        if check and res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            raise SetupError(
                f"prepare step {' '.join(cmd)} failed with status {res.returncode}"
                + (f": {err[-1]}" if err else "")
            )
        return res

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_json() for layer in self.layers.values()],
            "services": [{"kind": k, "pid": s.pid} for k, s in self.services.items()],
            "notes": self.notes,
            "scratch": str(self.scratch),
        }


class Run(StackContext):
    """The context of one run of a scenario (one iteration of one case of one variant)."""

    def __init__(
        self,
        scenario: Scenario,
        variant: Variant,
        case: Case,
        mode: str,
        index: int,
        scratch: Path,
        out_dir: Path,
        stack: lifecycle.Stack,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(scratch, stack)
        self.scenario = scenario
        self.variant = variant
        self.case = case
        self.mode = mode
        self.index = index
        self.out_dir = out_dir
        self.rng = rng or random.Random()

    @property
    def forced(self) -> bool:
        return self.mode == FORCED

    @property
    def params(self) -> Mapping[str, str]:
        return self.variant.params
