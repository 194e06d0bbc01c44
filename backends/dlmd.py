"""``stackfs dlmd``: the cluster's lock manager, a service daemon of its own (modelled fs/dlm).

The nodes of a cluster (each a GFS2 personality daemon, :mod:`backends.gfs2`) connect to
``RUN_DIR/PID/dlm.sock`` and keep that connection for as long as they live; one JSON object per
line each way:

``{"op": "join", "node": N, "lockspace": LS, "pid": P, "mountpoint": M}``
    first message: this connection is node ``N`` of lockspace ``LS`` (a cluster filesystem);
``{"op": "lock", "res": R, "mode": MODE, "rid": I, "waiters": [[TID, KIND]], "try": B}``
    ``dlm_lock`` / convert; answered, possibly much later, by ``{"op": "grant", "res": R,
    "mode": MODE, "rid": I}`` (the completion AST). ``waiters`` (optional, testbed only): the
    holder that asked (task, ``syscall``/``fault``/``prefault``/``read``); ``try`` (optional,
    ``DLM_LKF_NOQUEUE``): not grantable at once, the answer is at once, with the mode the node
    already holds (NL: none);
``{"op": "waiting", "res": R, "waiters": [[TID, KIND]]}``
    another holder now waits for the node's queued request on ``R`` (testbed only);
``{"op": "unlock", "res": R}``
``{"op": "bast", "res": R, "mode": WANTED}``
    sent to a node that holds ``R`` in a mode incompatible with another node's request;
``{"op": "rendezvous", "name": X, "step": "enter"|"held", "parties": K, "wait": S, "rid": I}``
    the testbed's forced mode (an injection point, not part of a DLM): ``enter`` waits until
    all ``K`` writers entered, then lets the first through and each next one once the one
    before it reported ``held``;
    ``held`` waits until all ``K`` reported ``held``. Either waits ``S`` seconds at most and
    answers ``{"op": "rendezvous", "rid": I, "passed": bool}``.

Injection points (``stackfs inject --pid PID POINT ACTION``, the control socket's ``inject``
op; ``stackfs explore`` puts them under the run's scheduler): ``queue_cast`` before a completion
AST (a grant) goes to its node, ``queue_bast`` before a blocking AST does. While a point is off
the ASTs go out in order from the request's own session; under an action each goes from a task
of its own, as fs/dlm delivers its callbacks from a workqueue (``dlm_add_cb`` ->
``dlm_callback_work``), so a held AST holds nothing else. The task at the point is the one the
AST is for: the task whose request is granted, or whose request made the blocking AST (from the
``waiters`` of ``lock``), else the node's daemon (a demote's conversion).

A closed connection (the node's daemon died or was killed) purges the node's locks and
requests, as DLM recovery does for a fenced node. ``stackfs state --pid PID`` (the control
socket) shows every resource: granted modes per node, queued requests, blocking ASTs sent.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from stackfs.kernel.dlm import DLM, Action, compatible
from stackfs.kernel.inject import OFF, InjectionPoints
from stackfs.kernel.task import Task, running_as
from stackfs.runtime import rundir, service

KIND = "dlm"
SOCKET = "dlm.sock"
#: the lock manager's injection points (see the module docstring)
POINTS = {
    "queue_cast": "before a completion AST (a grant) is sent to its node",
    "queue_bast": "before a blocking AST is sent to a node holding an incompatible mode",
}


def socket_path(pid: int) -> str:
    return str(rundir.daemon_dir(pid) / SOCKET)


@dataclass
class Session:
    node: str
    lockspace: str
    pid: int | None
    mountpoint: str | None
    stream: trio.SocketStream
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    joined: float = field(default_factory=time.time)

    async def send(self, msg: dict[str, Any]) -> None:
        async with self.send_lock:
            try:
                await self.stream.send_all(json.dumps(msg).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


@dataclass
class Rendezvous:
    """Forced mode's turnstile and barrier (see the module docstring)."""

    name: str
    parties: int
    entered: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    broken: bool = False
    #: broken because a party is stuck behind another that waits here (not a timeout)
    futile: bool = False
    #: what made it futile: the request that waits, and the demote that cannot happen
    why: str = ""
    changed: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parties": self.parties,
            "entered": self.entered,
            "held": self.held,
            "broken": self.broken,
            "futile": self.futile,
            "why": self.why,
        }


class LockServer:
    def __init__(self) -> None:
        self.dlm = DLM()
        self.sessions: dict[tuple[str, str], Session] = {}
        self.rendezvous: dict[str, Rendezvous] = {}
        #: (lockspace, resource, node) -> tids whose holders keep the node from demoting
        self.blocked: dict[tuple[str, str, str], set[int]] = {}
        #: (lockspace, resource, node) -> (tid, kind) of the holders that wait for the node's
        #: queued request (the ``waiters`` of ``lock``, then ``waiting``): the rendezvous's view
        self.waiting: dict[tuple[str, str, str], set[tuple[int, str]]] = {}
        self.log: list[dict[str, Any]] = []
        self.inject = InjectionPoints()
        for name, description in POINTS.items():
            self.inject.declare(name, description)
        #: where ASTs under an injection action are sent from (set once serving)
        self.nursery: trio.Nursery | None = None

    def _node_info(self, lockspace: str) -> dict[str, dict[str, Any]]:
        return {
            s.node: {"pid": s.pid, "mountpoint": s.mountpoint}
            for (ls, _), s in self.sessions.items()
            if ls == lockspace
        }

    def describe(self) -> dict[str, Any]:
        resources = []
        for res in self.dlm.resources.values():
            resources.append(res.to_json(self._node_info(res.lockspace)))
        return {
            "dlm": {
                "nodes": [
                    {
                        "node": s.node,
                        "lockspace": s.lockspace,
                        "pid": s.pid,
                        "mountpoint": s.mountpoint,
                    }
                    for s in self.sessions.values()
                ],
                "resources": resources,
                "rendezvous": [r.to_json() for r in self.rendezvous.values()],
                "log": self.log[-50:],
            },
            "inject": self.inject.snapshot(),
        }

    def _record(self, what: str, **kw: Any) -> None:
        self.log.append({"t": time.time(), "what": what, **kw})
        del self.log[:-200]

    async def _deliver(self, actions: list[Action], *, points: bool = True) -> None:
        """Send the ASTs; through their injection point unless ``points`` is False
        (recovery's purge)."""
        for a in actions:
            s = self.sessions.get((a.lockspace, a.node))
            self._record(a.kind, node=a.node, lockspace=a.lockspace, res=a.name, mode=a.mode)
            if s is None:
                continue
            point = "queue_cast" if a.kind == "grant" else "queue_bast"
            task = self._ast_task(a)
            if a.kind == "grant":
                self.waiting.pop((a.lockspace, a.name, a.node), None)
                msg = {"op": "grant", "res": a.name, "mode": a.mode, "rid": a.rid}
            else:
                msg = {"op": "bast", "res": a.name, "mode": a.mode}
            if points and self.nursery is not None and self.inject[point].action.kind != OFF:
                self.nursery.start_soon(self._cast, point, task, s, msg)
            else:
                await s.send(msg)

    async def _cast(self, point: str, task: Task, s: Session, msg: dict[str, Any]) -> None:
        """One AST from a task of its own, through its injection point (``dlm_callback_work``)."""
        with running_as(task):
            await self.inject.hit(point)
        await s.send(msg)

    def _ast_task(self, a: Action) -> Task:
        """The task an AST is for (see the module docstring)."""
        node = a.node
        if a.kind == "bast":
            res = self.dlm.resources.get((a.lockspace, a.name))
            if res is not None and res.queue:
                node = res.queue[0].node
        tids = sorted(t for t, _k in self.waiting.get((a.lockspace, a.name, node), set()))
        if tids:
            return Task.from_pid(tids[0])
        sess = self.sessions.get((a.lockspace, node))
        return (
            Task.from_pid(sess.pid) if sess is not None and sess.pid else Task.from_pid(os.getpid())
        )

    async def session(self, stream: trio.SocketStream) -> None:
        sess: Session | None = None
        buf = b""
        try:
            async with stream, trio.open_nursery() as nursery:
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        msg = json.loads(line)
                        if sess is None:
                            if msg.get("op") != "join":
                                return
                            sess = Session(
                                str(msg["node"]),
                                str(msg["lockspace"]),
                                msg.get("pid"),
                                msg.get("mountpoint"),
                                stream,
                            )
                            old = self.sessions.get((sess.lockspace, sess.node))
                            if old is not None:  # a restarted node: the old one is gone
                                await self._deliver(
                                    self.dlm.purge_node(sess.node, sess.lockspace), points=False
                                )
                            self.sessions[(sess.lockspace, sess.node)] = sess
                            self._record(
                                "join", node=sess.node, lockspace=sess.lockspace, pid=sess.pid
                            )
                            await sess.send({"op": "joined", "pid": os.getpid()})
                            continue
                        await self._handle(sess, msg, nursery)
                nursery.cancel_scope.cancel()
        finally:
            if sess is not None and self.sessions.get((sess.lockspace, sess.node)) is sess:
                del self.sessions[(sess.lockspace, sess.node)]
                self._record("leave", node=sess.node, lockspace=sess.lockspace, pid=sess.pid)
                for key in [k for k in self.blocked if (k[0], k[2]) == (sess.lockspace, sess.node)]:
                    del self.blocked[key]
                for key in [k for k in self.waiting if (k[0], k[2]) == (sess.lockspace, sess.node)]:
                    del self.waiting[key]
                with trio.CancelScope(shield=True):
                    await self._deliver(
                        self.dlm.purge_node(sess.node, sess.lockspace), points=False
                    )

    async def _handle(self, sess: Session, msg: dict[str, Any], nursery: trio.Nursery) -> None:
        op = msg.get("op")
        if op == "lock":
            self.waiting[(sess.lockspace, str(msg["res"]), sess.node)] = {
                (int(t), str(k)) for t, k in msg.get("waiters", [])
            }
            self._record(
                "request",
                node=sess.node,
                lockspace=sess.lockspace,
                res=msg["res"],
                mode=msg["mode"],
            )
            await self._deliver(
                self.dlm.lock(
                    sess.lockspace,
                    str(msg["res"]),
                    sess.node,
                    str(msg["mode"]),
                    int(msg.get("rid", 0)),
                    try_=bool(msg.get("try")),
                )
            )
        elif op == "unlock":
            await self._deliver(self.dlm.unlock(sess.lockspace, str(msg["res"]), sess.node))
        elif op == "blocked":
            # the node cannot demote: syscall holders (tids) are in the way
            self.blocked[(sess.lockspace, str(msg["res"]), sess.node)] = {
                int(t) for t in msg.get("tids", [])
            }
        elif op == "waiting":
            key = (sess.lockspace, str(msg["res"]), sess.node)
            if key in self.waiting:
                self.waiting[key] |= {(int(t), str(k)) for t, k in msg.get("waiters", [])}
        elif op == "rendezvous":
            nursery.start_soon(self._rendezvous, sess, msg)
        if op in ("lock", "unlock"):
            self.blocked.pop((sess.lockspace, str(msg["res"]), sess.node), None)
        for rv in self.rendezvous.values():
            rv.poke()

    def _futile(self, rv: Rendezvous) -> str:
        """Can the barrier no longer fill? A writer that has not reported ``held`` yet waits,
        on its way to its glocks (its own ``gfs2_glock_nq``: kind ``syscall``; or the node's
        prefault: ``prefault``), for a node whose demote is held up by a writer that itself
        waits at the barrier (sorted locking or a prefault put the second writer behind the
        first: the forced window is closed, let the first one go). A page-in that waits
        (readahead a writer started before the barrier, served late on a slow machine) does
        not count: the writer's glocks do not wait for it."""
        waiting = {int(w.rpartition("/")[2]) for w in rv.held if w.rpartition("/")[2].isdigit()}
        for res in self.dlm.resources.values():
            for req in res.queue:
                waiters = self.waiting.get((res.lockspace, res.name, req.node), set())
                if not {k for _t, k in waiters} & {"syscall", "prefault"}:
                    continue
                for node, mode in res.granted.items():
                    if node == req.node or compatible(req.mode, mode):
                        continue
                    stuck = self.blocked.get((res.lockspace, res.name, node), set()) & waiting
                    if stuck:
                        return (
                            f"{req.node}'s {req.mode} request for {res.lockspace}:{res.name} "
                            f"(waited for by {sorted(waiters)})"
                            f" needs {node}'s {mode} demoted, which tasks {sorted(stuck)} hold up"
                        )
        return ""

    async def _rendezvous(self, sess: Session, msg: dict[str, Any]) -> None:
        name = str(msg.get("name", "forced"))
        rv = self.rendezvous.get(name)
        if rv is None:
            rv = self.rendezvous[name] = Rendezvous(name, int(msg.get("parties", 2)))
        who = f"{sess.node}/{msg.get('tid', '?')}"
        step = msg.get("step")
        passed = True
        with trio.move_on_after(float(msg.get("wait", 1.0))) as scope:
            if step == "enter":
                rv.entered.append(who)
                rv.poke()
                # every writer is in its syscall (its first chunk's pages are faulted in)
                while not rv.broken and len(rv.entered) < rv.parties:
                    await rv.changed.wait()
                # then the k-th writer goes once k-1 writers hold their glocks
                k = rv.entered.index(who)
                while not rv.broken and len(rv.held) < k:
                    await rv.changed.wait()
            else:
                rv.held.append(who)
                rv.poke()
                while not rv.broken and len(rv.held) < rv.parties:
                    why = self._futile(rv) if len(rv.entered) >= rv.parties else ""
                    if why:
                        rv.broken = True
                        rv.futile = True
                        rv.why = why
                        rv.poke()
                        break
                    await rv.changed.wait()
        if scope.cancelled_caught:
            passed = False
            rv.broken = True  # a party that never comes: let everyone through from now on
            rv.poke()
        await sess.send({"op": "rendezvous", "rid": msg.get("rid"), "passed": passed})


async def _serve_sessions(
    server: LockServer, path: str, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    listener = await service.unix_listener(path, 16)
    task_status.started()
    await trio.serve_listeners(server.session, [listener])


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="stackfs dlmd", description=__doc__.split("\n\n")[0]).parse_args(
        argv
    )
    server = LockServer()
    path = socket_path(os.getpid())

    async def run(nursery: trio.Nursery, info: dict[str, Any]) -> None:
        server.nursery = nursery
        await nursery.start(_serve_sessions, server, path)
        service.ready()
        await trio.sleep_forever()

    async def inject(req: dict[str, Any]) -> dict[str, Any]:
        point, action = req.get("point"), req.get("action")
        if not point or not action:
            raise ValueError("inject needs 'point' and 'action'")
        server.inject.configure(f"{point}={action}")
        return {"inject": server.inject.snapshot()}

    return service.serve(
        KIND, {"inject": inject}, run, describe=server.describe, extra={"socket": path}
    )


if __name__ == "__main__":
    raise SystemExit(main())
