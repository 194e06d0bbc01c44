"""The wait-for graph's node and edge attributes, typed: the watchdog's own schema.

A node of :mod:`stackfs.watchdog.graph` carries what its kind knows (a task's tid and state, a
request's daemon and wire form, a lock's identity and snapshot, ...), an edge how it waits or
holds (mode, where, the model's call chain). They travel in ``report.json`` as the ``attrs``
object of each node and edge; :meth:`NodeAttrs.parse` / :meth:`EdgeAttrs.parse` read a saved
one back (every field checked for its type, a wrong one read as absent), so the watchdog, the
report and :mod:`stackfs.watchdog.kernfmt` read attributes, never keys. ``wire`` keeps the keys
a kind writes, so the JSON is what it was: each kind's constructor names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stackfs.kernel.snapshot import CompletionSnap, LockSnap, RequestSnap, as_int, as_str


def _bool(x: object) -> bool | None:
    return x if isinstance(x, bool) else None


def _wire(obj: object, wire: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in wire:
        v = getattr(obj, k)
        if isinstance(v, (RequestSnap, LockSnap, CompletionSnap)):
            v = dict(v.raw)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class NodeAttrs:
    """What a node knows, by kind: ``task`` (tid, pid, comm, state, wchan; an exited one:
    tid, state ``gone``), ``request`` (daemon, conn, mountpoint, request), ``conn`` (conn,
    mountpoint, waiting, fsname), ``daemon`` (pid, comm, alive, conn, mountpoint, how; a
    service: pid, service, kind), ``klock`` (path, conn, is_dir), ``lock`` (ident, desc,
    daemon, conn, lock, scope), ``completion`` (ident, desc, daemon, conn, completion),
    ``inject`` (point, action)."""

    tid: int | None = None
    pid: int | None = None
    comm: str | None = None
    state: str | None = None
    wchan: str | None = None
    #: the pid of the daemon whose model has it (request, lock, completion)
    daemon: int | None = None
    conn: int | None = None
    mountpoint: str | None = None
    request: RequestSnap | None = None
    waiting: int | None = None
    fsname: str | None = None
    alive: bool | None = None
    how: str | None = None
    service: bool | None = None
    kind: str | None = None
    path: str | None = None
    is_dir: bool | None = None
    ident: str | None = None
    desc: str | None = None
    lock: LockSnap | None = None
    scope: str | None = None
    completion: CompletionSnap | None = None
    point: str | None = None
    action: str | None = None
    #: the keys this node writes (its kind's)
    wire: tuple[str, ...] = ()

    @classmethod
    def task(cls, tid: int, pid: int, comm: str, state: str, wchan: str) -> NodeAttrs:
        return cls(
            tid=tid,
            pid=pid,
            comm=comm,
            state=state,
            wchan=wchan,
            wire=("tid", "pid", "comm", "state", "wchan"),
        )

    @classmethod
    def exited(cls, tid: int) -> NodeAttrs:
        return cls(tid=tid, state="gone", wire=("tid", "state"))

    @classmethod
    def for_request(
        cls, daemon: int | None, conn: int, mountpoint: str, request: RequestSnap
    ) -> NodeAttrs:
        return cls(
            daemon=daemon,
            conn=conn,
            mountpoint=mountpoint,
            request=request,
            wire=("daemon", "conn", "mountpoint", "request"),
        )

    @classmethod
    def for_conn(
        cls, conn: int | None, mountpoint: str, waiting: int | None, fsname: str | None
    ) -> NodeAttrs:
        if conn is None:
            return cls(wire=("conn",))
        return cls(
            conn=conn,
            mountpoint=mountpoint,
            waiting=waiting,
            fsname=fsname,
            wire=("conn", "mountpoint", "waiting", "fsname"),
        )

    @classmethod
    def for_daemon(
        cls,
        pid: int | None,
        comm: str | None,
        alive: bool | None,
        conn: int,
        mountpoint: str,
        how: str | None,
    ) -> NodeAttrs:
        return cls(
            pid=pid,
            comm=comm,
            alive=alive,
            conn=conn,
            mountpoint=mountpoint,
            how=how,
            wire=("pid", "comm", "alive", "conn", "mountpoint", "how"),
        )

    @classmethod
    def for_service(cls, pid: int | None, kind: str | None) -> NodeAttrs:
        return cls(pid=pid, service=True, kind=kind, wire=("pid", "service", "kind"))

    @classmethod
    def klock(cls, path: str, conn: int | None, is_dir: bool | None) -> NodeAttrs:
        return cls(path=path, conn=conn, is_dir=is_dir, wire=("path", "conn", "is_dir"))

    @classmethod
    def for_lock(
        cls, lock: LockSnap, daemon: int | None, conn: int, scope: str | None
    ) -> NodeAttrs:
        return cls(
            ident=lock.ident,
            desc=lock.desc or None,
            daemon=daemon,
            conn=conn,
            lock=lock,
            scope=scope,
            wire=("ident", "desc", "daemon", "conn", "lock", "scope"),
        )

    @classmethod
    def for_completion(cls, comp: CompletionSnap, daemon: int | None, conn: int) -> NodeAttrs:
        return cls(
            ident=comp.ident,
            desc=comp.desc or None,
            daemon=daemon,
            conn=conn,
            completion=comp,
            wire=("ident", "desc", "daemon", "conn", "completion"),
        )

    @classmethod
    def inject(cls, point: str, action: str) -> NodeAttrs:
        return cls(point=point, action=action, wire=("point", "action"))

    @property
    def name(self) -> str:
        """A task node's ``comm/tid``."""
        return f"{self.comm or '?'}/{self.tid}"

    def to_json(self) -> dict[str, Any]:
        return _wire(self, self.wire)

    @classmethod
    def parse(cls, d: object) -> NodeAttrs:
        """A saved node's ``attrs`` (``report.json``); what is of the wrong type is absent."""
        a = d if isinstance(d, Mapping) else {}
        known = {f.name for f in fields(cls)} - {"wire"}
        return cls(
            tid=as_int(a.get("tid")),
            pid=as_int(a.get("pid")),
            comm=as_str(a.get("comm")),
            state=as_str(a.get("state")),
            wchan=as_str(a.get("wchan")),
            daemon=as_int(a.get("daemon")),
            conn=as_int(a.get("conn")),
            mountpoint=as_str(a.get("mountpoint")),
            request=RequestSnap.parse(a["request"]) if "request" in a else None,
            waiting=as_int(a.get("waiting")),
            fsname=as_str(a.get("fsname")),
            alive=_bool(a.get("alive")),
            how=as_str(a.get("how")),
            service=_bool(a.get("service")),
            kind=as_str(a.get("kind")),
            path=as_str(a.get("path")),
            is_dir=_bool(a.get("is_dir")),
            ident=as_str(a.get("ident")),
            desc=as_str(a.get("desc")),
            lock=LockSnap.parse(a["lock"]) if isinstance(a.get("lock"), Mapping) else None,
            scope=as_str(a.get("scope")),
            completion=(
                CompletionSnap.parse(a["completion"])
                if isinstance(a.get("completion"), Mapping)
                else None
            ),
            point=as_str(a.get("point")),
            action=as_str(a.get("action")),
            wire=tuple(k for k in a if k in known),
        )


@dataclass(frozen=True, slots=True)
class EdgeAttrs:
    """How an edge waits or holds: ``mode`` and ``at`` (an i_rwsem inferred from a stack, a
    folio wait), ``chain`` (the model's call chain of a modelled wait or hold), ``matched`` and
    ``among`` (a caller paired with its request by opcode), ``ambiguous`` (the holder may be
    one of the task's ancestors), ``completion`` (the ident of the completion a task is to
    complete)."""

    mode: str | None = None
    at: str | None = None
    chain: tuple[str, ...] = ()
    matched: str | None = None
    among: int | None = None
    ambiguous: bool | None = None
    completion: str | None = None
    wire: tuple[str, ...] = ()

    @classmethod
    def inferred(cls, mode: str, at: str, ambiguous: bool | None = None) -> EdgeAttrs:
        """A wait for or a hold of an i_rwsem, inferred from a kernel stack."""
        if ambiguous is None:
            return cls(mode=mode, at=at, wire=("mode", "at"))
        return cls(mode=mode, at=at, ambiguous=ambiguous, wire=("mode", "at", "ambiguous"))

    @classmethod
    def folio(cls, at: str) -> EdgeAttrs:
        return cls(at=at, wire=("at",))

    @classmethod
    def paired(cls, among: int) -> EdgeAttrs:
        return cls(matched="opcode", among=among, wire=("matched", "among"))

    @classmethod
    def modelled(cls, mode: str | None, chain: tuple[str, ...]) -> EdgeAttrs:
        """A wait for or a hold of a modelled lock, with the model's call chain."""
        return cls(mode=mode, chain=chain, wire=("mode", "chain"))

    @classmethod
    def completion_wait(cls, chain: tuple[str, ...]) -> EdgeAttrs:
        return cls(chain=chain, wire=("chain",))

    @classmethod
    def to_complete(cls, ident: str) -> EdgeAttrs:
        return cls(completion=ident, wire=("completion",))

    @property
    def where(self) -> str | None:
        """Where it waits or holds: ``at``, else the innermost function of ``chain``."""
        return self.at or (self.chain[-1] if self.chain else None)

    def to_json(self) -> dict[str, Any]:
        return _wire(self, self.wire)

    @classmethod
    def parse(cls, d: object) -> EdgeAttrs:
        a = d if isinstance(d, Mapping) else {}
        known = {f.name for f in fields(cls)} - {"wire"}
        chain = a.get("chain")
        return cls(
            mode=as_str(a.get("mode")),
            at=as_str(a.get("at")),
            chain=tuple(str(f) for f in chain) if isinstance(chain, (list, tuple)) else (),
            matched=as_str(a.get("matched")),
            among=as_int(a.get("among")),
            ambiguous=_bool(a.get("ambiguous")),
            completion=as_str(a.get("completion")),
            wire=tuple(k for k in a if k in known),
        )
