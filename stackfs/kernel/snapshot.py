"""The state snapshot's types: what a testbed daemon's ``state`` answer holds, parsed once.

The models write the snapshot as JSON (the wire format of docs/ARCHITECTURE.md, "State
snapshot", which ``stackfs state`` prints and other tools read): ``Request.to_json``
(:mod:`stackfs.kernel.inflight`), ``RWSem.to_json`` and ``LockHolder.to_json``
(:mod:`stackfs.kernel.locks`; a GFS2 glock adds ``scope``, ``node``, ``state``, ``demote``,
``dlm_pid``: :mod:`backends.glock`), ``Dependency.to_json`` (:mod:`stackfs.kernel.lockdep`),
the events of :mod:`stackfs.kernel.events`, ``InjectionPoint.to_json``
(:mod:`stackfs.kernel.inject`) and ``Completion.to_json`` (:mod:`stackfs.kernel.completion`).
These are the reader's side of the same objects: :func:`parse` turns a daemon's answer into
frozen dataclasses once, so the watchdog reads attributes and a wrong name fails the type
checker. The answer comes from another process: every field is checked for its type and a
field of the wrong type reads as absent (None, empty), never raises. Each object keeps its wire
form in ``raw`` for what is written back out as JSON (reports, graph nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: a JSON object as a model's ``to_json`` (or a saved report) gives it
Json = Mapping[str, Any]

# The readers of someone's JSON: a field of the wrong type reads as absent (None, empty), never
# raises. Used here and by the watchdog's own schemas (findings, graph attributes).


def as_dict(x: object) -> Json:
    return x if isinstance(x, Mapping) else {}


def as_list(x: object) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else []


def as_int(x: object) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def as_float(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def as_str(x: object) -> str | None:
    return x if isinstance(x, str) else None


def _chain(x: object) -> tuple[str, ...]:
    return tuple(str(f) for f in as_list(x))


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A task as the models name it (``Task.to_json``: ``{"pid", "comm"}``)."""

    pid: int | None
    comm: str

    @classmethod
    def parse(cls, d: object) -> TaskRef | None:
        if not isinstance(d, Mapping):
            return None
        return cls(as_int(d.get("pid")), as_str(d.get("comm")) or "?")

    def name(self) -> str:
        return f"{self.comm}/{self.pid}"


def _pid(task: TaskRef | None) -> int | None:
    return task.pid if task is not None else None


@dataclass(frozen=True, slots=True)
class RequestSnap:
    """A FUSE request in flight (``Request.to_json``)."""

    id: int | None
    op: str | None
    ino: int | None
    name: str | None
    task: TaskRef | None
    since: float | None
    age: float | None
    #: the worker thread serving it (``{"tid"}`` on the wire)
    worker: int | None
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def parse(cls, d: object) -> RequestSnap:
        r = as_dict(d)
        return cls(
            as_int(r.get("id")),
            as_str(r.get("op")),
            as_int(r.get("ino")),
            as_str(r.get("name")),
            TaskRef.parse(r.get("task")),
            as_float(r.get("since")),
            as_float(r.get("age")),
            as_int(as_dict(r.get("worker")).get("tid")),
            r,
        )

    @property
    def pid(self) -> int | None:
        """The tid of the task that made the request (None: READ/WRITE without a pid)."""
        return _pid(self.task)


@dataclass(frozen=True, slots=True)
class LockHold:
    """A holder or a waiter of a modelled lock (``LockHolder.to_json``)."""

    task: TaskRef | None
    mode: str | None
    since: float | None
    chain: tuple[str, ...]
    #: the cluster node that reports it (a holder of a cluster-scoped lock, joined across nodes)
    node: str | None = None

    @classmethod
    def parse(cls, d: object, node: str | None = None) -> LockHold:
        h = as_dict(d)
        return cls(
            TaskRef.parse(h.get("task")),
            as_str(h.get("mode")),
            as_float(h.get("since")),
            _chain(h.get("chain")),
            node,
        )

    @property
    def pid(self) -> int | None:
        return _pid(self.task)


@dataclass(frozen=True, slots=True)
class LockSnap:
    """A modelled lock someone holds or awaits (``RWSem.to_json``, or a glock's entry)."""

    name: str
    key: str
    desc: str
    holders: tuple[LockHold, ...]
    waiters: tuple[LockHold, ...]
    #: a lock of a cluster (``"dlm:LOCKSPACE"``), not of one daemon; then the reporting
    #: ``node``, its cached ``state`` (NL..EX, None unlocked), a pending ``demote`` and the
    #: lock manager's pid
    scope: str | None = None
    node: str | None = None
    state: str | None = None
    demote: str | None = None
    dlm_pid: int | None = None
    raw: Json = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, d: object) -> LockSnap:
        lock = as_dict(d)
        return cls(
            as_str(lock.get("name")) or "lock",
            str(lock.get("key", "?")),
            as_str(lock.get("desc")) or "",
            tuple(LockHold.parse(h) for h in as_list(lock.get("holders"))),
            tuple(LockHold.parse(w) for w in as_list(lock.get("waiters"))),
            as_str(lock.get("scope")),
            as_str(lock.get("node")),
            as_str(lock.get("state")),
            as_str(lock.get("demote")),
            as_int(lock.get("dlm_pid")),
            lock,
        )

    @property
    def ident(self) -> str:
        """How lockdep and the events name it: ``"i_rwsem ino:5"``."""
        return f"{self.name} {self.key}"


@dataclass(frozen=True, slots=True)
class LockOrderSnap:
    """A lock taken while holding another (``Dependency.to_json``)."""

    first: str
    then: str
    task: TaskRef | None
    chain: tuple[str, ...]

    @classmethod
    def parse(cls, d: object) -> LockOrderSnap:
        dep = as_dict(d)
        return cls(
            str(dep.get("first", "?")),
            str(dep.get("then", "?")),
            TaskRef.parse(dep.get("task")),
            _chain(dep.get("chain")),
        )


@dataclass(frozen=True, slots=True)
class EventTask:
    """A task an event names (``task_json``: ``{"pid", "comm", "chain"}``)."""

    pid: int | None
    comm: str | None
    chain: tuple[str, ...]

    @classmethod
    def parse(cls, d: object) -> EventTask:
        t = as_dict(d)
        return cls(as_int(t.get("pid")), as_str(t.get("comm")), _chain(t.get("chain")))


@dataclass(frozen=True, slots=True)
class DependencySnap:
    """A lock order with its modes and chains (``Dependency.detail``, lockdep's events)."""

    first: str | None
    then: str | None
    first_mode: str | None
    then_mode: str | None
    #: the call chain that took ``then`` (and the one that took ``first``)
    chain: tuple[str, ...]
    first_chain: tuple[str, ...]

    @classmethod
    def parse(cls, d: object) -> DependencySnap:
        x = as_dict(d)
        return cls(
            as_str(x.get("first")),
            as_str(x.get("then")),
            as_str(x.get("first_mode")),
            as_str(x.get("then_mode")),
            _chain(x.get("chain")),
            _chain(x.get("first_chain")),
        )


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An event's ``detail``, each type's keys: ``recursive_locking``
    (``RWSem._check_recursion``: ``lock``, ``mode``, ``chain``, ``held_mode``,
    ``held_chain``), ``lock_inversion`` (``LockDep``: ``new``, ``existing``, ``scenario``),
    ``oops`` (``dcache``'s BUG_ON: ``bug``, ``lines``); what a type does not have is empty."""

    lock: str | None = None
    mode: str | None = None
    chain: tuple[str, ...] = ()
    held_mode: str | None = None
    held_chain: tuple[str, ...] = ()
    new: DependencySnap | None = None
    existing: tuple[DependencySnap, ...] = ()
    scenario: tuple[str, ...] = ()
    bug: str | None = None
    lines: tuple[str, ...] = ()

    @classmethod
    def parse(cls, d: object) -> EventDetail:
        x = as_dict(d)
        return cls(
            as_str(x.get("lock")),
            as_str(x.get("mode")),
            _chain(x.get("chain")),
            as_str(x.get("held_mode")),
            _chain(x.get("held_chain")),
            DependencySnap.parse(x["new"]) if isinstance(x.get("new"), Mapping) else None,
            tuple(DependencySnap.parse(e) for e in as_list(x.get("existing"))),
            _chain(x.get("scenario")),
            as_str(x.get("bug")),
            _chain(x.get("lines")),
        )


@dataclass(frozen=True, slots=True)
class EventSnap:
    """A modelled kernel event (:mod:`stackfs.kernel.events`); ``detail`` is the type's own."""

    type: str | None
    time: float | None
    summary: str | None
    #: the release the daemon's model stands for, when it declares one
    release: str | None
    raw: Json = field(repr=False, compare=False)
    tasks: tuple[EventTask, ...] = ()
    detail: EventDetail = field(default_factory=EventDetail)

    @classmethod
    def parse(cls, d: object) -> EventSnap:
        ev = as_dict(d)
        return cls(
            as_str(ev.get("type")),
            as_float(ev.get("time")),
            as_str(ev.get("summary")),
            as_str(ev.get("release")),
            ev,
            tuple(EventTask.parse(t) for t in as_list(ev.get("tasks"))),
            EventDetail.parse(ev.get("detail")),
        )


@dataclass(frozen=True, slots=True)
class InjectSnap:
    """An injection point (``InjectionPoint.to_json``)."""

    point: str
    action: str
    hits: int
    waiting: tuple[TaskRef, ...]

    @classmethod
    def parse(cls, d: object) -> InjectSnap:
        p = as_dict(d)
        return cls(
            str(p.get("point", "?")),
            str(p.get("action", "?")),
            as_int(p.get("hits")) or 0,
            tuple(t for w in as_list(p.get("waiting")) if (t := TaskRef.parse(w)) is not None),
        )


@dataclass(frozen=True, slots=True)
class CompletionWait:
    """A task waiting for a completion, with its model call chain."""

    task: TaskRef | None
    chain: tuple[str, ...]
    since: float | None

    @property
    def pid(self) -> int | None:
        return _pid(self.task)


@dataclass(frozen=True, slots=True)
class CompletionSnap:
    """A completion held by a task (``Completion.to_json``: autofs4's wait queue)."""

    id: int | None
    name: str
    key: str
    desc: str
    holder: TaskRef | None
    waiters: tuple[CompletionWait, ...]
    done: bool
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def parse(cls, d: object) -> CompletionSnap:
        c = as_dict(d)
        return cls(
            as_int(c.get("id")),
            as_str(c.get("name")) or "completion",
            str(c.get("key", "?")),
            as_str(c.get("desc")) or "",
            TaskRef.parse(c.get("holder")),
            tuple(
                CompletionWait(
                    TaskRef.parse(as_dict(w).get("task")),
                    _chain(as_dict(w).get("chain")),
                    as_float(as_dict(w).get("since")),
                )
                for w in as_list(c.get("waiters"))
            ),
            c.get("done") is True,
            c,
        )

    @property
    def ident(self) -> str:
        return f"{self.name} {self.key}"


@dataclass(frozen=True, slots=True)
class DlmLockSnap:
    """A granted or queued lock of a DLM resource, or a blocking AST sent
    (``Resource.to_json``, :mod:`stackfs.kernel.dlm`)."""

    node: str
    mode: str | None
    #: queued: seconds it has waited; a blocking AST: the mode it was sent for
    age: float | None = None
    wanted: str | None = None

    @classmethod
    def parse(cls, d: object) -> DlmLockSnap:
        x = as_dict(d)
        return cls(
            str(x.get("node", "?")),
            as_str(x.get("mode")),
            as_float(x.get("age")),
            as_str(x.get("wanted")),
        )


@dataclass(frozen=True, slots=True)
class DlmResourceSnap:
    """A DLM resource (``Resource.to_json``): its grant queue, wait queue and basts."""

    lockspace: str
    name: str
    granted: tuple[DlmLockSnap, ...]
    queue: tuple[DlmLockSnap, ...]
    basts: tuple[DlmLockSnap, ...]

    @classmethod
    def parse(cls, d: object) -> DlmResourceSnap:
        x = as_dict(d)
        return cls(
            str(x.get("lockspace", "?")),
            str(x.get("name", "?")),
            tuple(DlmLockSnap.parse(g) for g in as_list(x.get("granted"))),
            tuple(DlmLockSnap.parse(q) for q in as_list(x.get("queue"))),
            tuple(DlmLockSnap.parse(b) for b in as_list(x.get("basts"))),
        )


@dataclass(frozen=True, slots=True)
class DlmSnap:
    """A lock manager's ``state`` answer (``dlmd``): the lockspaces its nodes joined, its
    resources."""

    lockspaces: frozenset[str] = frozenset()
    resources: tuple[DlmResourceSnap, ...] = ()

    @classmethod
    def parse(cls, state: object) -> DlmSnap:
        dlm = as_dict(as_dict(state).get("dlm"))
        return cls(
            frozenset(
                ls for n in as_list(dlm.get("nodes")) if (ls := as_str(as_dict(n).get("lockspace")))
            ),
            tuple(DlmResourceSnap.parse(r) for r in as_list(dlm.get("resources"))),
        )


@dataclass(frozen=True, slots=True)
class KernelSnapshot:
    """One daemon's ``state`` answer (:meth:`KernelState.snapshot
    <stackfs.kernel.state.KernelState.snapshot>` plus the daemon's keys), parsed."""

    inflight: tuple[RequestSnap, ...] = ()
    locks: tuple[LockSnap, ...] = ()
    lock_order: tuple[LockOrderSnap, ...] = ()
    events: tuple[EventSnap, ...] = ()
    inject: tuple[InjectSnap, ...] = ()
    completions: tuple[CompletionSnap, ...] = ()


def parse(state: object) -> KernelSnapshot:
    """A daemon's ``state`` answer (a JSON object), typed; what is not there is empty."""
    s = as_dict(state)
    return KernelSnapshot(
        tuple(RequestSnap.parse(r) for r in as_list(s.get("inflight"))),
        tuple(LockSnap.parse(lock) for lock in as_list(s.get("locks"))),
        tuple(LockOrderSnap.parse(d) for d in as_list(s.get("lock_order"))),
        tuple(EventSnap.parse(e) for e in as_list(s.get("events")) if isinstance(e, Mapping)),
        tuple(InjectSnap.parse(p) for p in as_list(s.get("inject"))),
        tuple(CompletionSnap.parse(c) for c in as_list(s.get("completions"))),
    )
