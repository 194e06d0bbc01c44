"""``stackfs dlmd``, the lock manager service, on its own: blocking ASTs to the holding node,
a node whose daemon dies loses its locks, ``state`` over the control socket, and
``stackfs cleanup --run-id`` reaps it when whoever started it was SIGKILLed."""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid

import psutil
import pytest

from stackfs.runtime import lifecycle, rundir, service


class Node:
    """A raw client of dlm.sock (what backends.glock.DLMClient speaks)."""

    def __init__(self, path: str, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.buf = b""
        self.send({"op": "join", "node": name, "lockspace": "fs", "pid": os.getpid()})
        assert self.recv()["op"] == "joined"

    def send(self, msg: dict) -> None:
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self) -> dict:
        while b"\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


@pytest.fixture
def dlm():
    run_id = f"test-dlmd-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, STACKFS_RUN_ID=run_id)
    svc = service.start([sys.executable, "-m", "backends.dlmd"], "dlm", env=env)
    yield svc, run_id
    svc.stop()


@pytest.mark.timeout(20)
def test_bast_and_dead_node_releases(dlm):
    svc, _run_id = dlm
    path = str(svc.run_dir / "dlm.sock")
    n1, n2 = Node(path, "node1"), Node(path, "node2")
    n1.send({"op": "lock", "res": "2/a", "mode": "EX", "rid": 1})
    assert n1.recv() == {"op": "grant", "res": "2/a", "mode": "EX", "rid": 1}
    n2.send({"op": "lock", "res": "2/a", "mode": "PR", "rid": 5})
    assert n1.recv() == {"op": "bast", "res": "2/a", "mode": "PR"}  # demote request
    state = svc.control({"op": "state"})
    assert state["daemon"]["kind"] == "dlm" and state["daemon"]["mountpoint"] is None
    (res,) = state["dlm"]["resources"]
    assert [(g["node"], g["mode"]) for g in res["granted"]] == [("node1", "EX")]
    assert [(q["node"], q["mode"]) for q in res["queue"]] == [("node2", "PR")]
    n1.sock.close()  # node1's daemon dies: its EX goes, node2's PR is granted
    assert n2.recv() == {"op": "grant", "res": "2/a", "mode": "PR", "rid": 5}
    n2.sock.close()


@pytest.mark.timeout(20)
def test_cleanup_reaps_a_service_left_behind(dlm):
    svc, run_id = dlm
    assert svc.pid in service.running(run_id)
    # whoever started it was SIGKILLed: only the run directory knows the service
    proc, svc.proc = svc.proc, None
    actions = lifecycle.cleanup(run_id=run_id)
    assert [(a.pid, a.what) for a in actions] == [(svc.pid, "killed dlm service")]
    assert proc is not None and proc.wait(timeout=5) == -9
    assert not psutil.pid_exists(svc.pid)
    assert rundir.read_info(svc.pid) is None


def _until(svc, pred) -> dict:
    """The lock manager's state once ``pred(state)`` holds (pytest-timeout bounds the wait)."""
    while True:
        state = svc.control({"op": "state"})["dlm"]
        if pred(state):
            return state


@pytest.mark.timeout(20)
def test_rendezvous_is_futile_only_when_a_writer_waits_on_its_way_to_its_glocks(dlm):
    """Forced mode (seed 004): node2's writer holds B EX and waits at the barrier; node1's
    queued PR on B that only a page-in waits for (readahead served late on a slow machine)
    does not break the barrier; once node1's writer itself (kind syscall) waits for that
    request, the barrier can never fill: futile, node2's writer goes on."""
    svc, _run_id = dlm
    path = str(svc.run_dir / "dlm.sock")
    n1, n2 = Node(path, "node1"), Node(path, "node2")
    rv = {"op": "rendezvous", "name": "w", "parties": 2, "wait": 60}
    n2.send({"op": "lock", "res": "2/b", "mode": "EX", "rid": 1, "waiters": [[222, "syscall"]]})
    assert n2.recv()["op"] == "grant"
    n2.send({**rv, "step": "enter", "tid": 222, "rid": 2})
    _until(svc, lambda s: s["rendezvous"] and s["rendezvous"][0]["entered"] == ["node2/222"])
    n1.send({**rv, "step": "enter", "tid": 111, "rid": 3})
    assert n2.recv() == {"op": "rendezvous", "rid": 2, "passed": True}  # the first goes
    n1.send({"op": "lock", "res": "2/b", "mode": "PR", "rid": 4, "waiters": [[111, "fault"]]})
    assert n2.recv() == {"op": "bast", "res": "2/b", "mode": "PR"}
    n2.send({"op": "blocked", "res": "2/b", "tids": [222]})  # its writer's holder is in the way
    n2.send({**rv, "step": "held", "tid": 222, "rid": 5})
    state = _until(svc, lambda s: s["rendezvous"][0]["held"] == ["node2/222"])
    assert n1.recv() == {"op": "rendezvous", "rid": 3, "passed": True}  # node1's turn now
    state = svc.control({"op": "state"})["dlm"]
    assert not state["rendezvous"][0]["broken"], "a page-in's request broke the barrier"
    n1.send({"op": "waiting", "res": "2/b", "waiters": [[111, "syscall"]]})
    assert n2.recv() == {"op": "rendezvous", "rid": 5, "passed": True}
    (r,) = svc.control({"op": "state"})["dlm"]["rendezvous"]
    assert r["futile"] and "(111, 'syscall')" in r["why"] and "[222]" in r["why"], r
    n1.sock.close()
    n2.sock.close()


def test_a_glock_is_named_after_the_store_inode_not_the_node_local_one():
    """Each node allocates FUSE inode numbers in its own lookup order where the store's cannot
    be used (an overlayfs root in a VM): the DLM resource must be the same on every node."""
    from backends.glock import Glock

    node1, node2 = Glock((1 << 56) + 1, "/A", number=0x2A), Glock(1 << 56, "/A", number=0x2A)
    assert node1.name == node2.name == "2/2a"


@pytest.mark.timeout(20)
def test_asts_are_scheduled_points_of_the_task_they_are_for(dlm, tmp_path):
    """``queue_cast`` / ``queue_bast`` under ``sched:SOCKET`` (what ``stackfs explore`` sets
    through the control socket's ``inject`` op): each AST waits at its point, as the task whose
    request it answers (the ``waiters`` of ``lock``), and goes out once released."""
    svc, _run_id = dlm
    path = str(svc.run_dir / "dlm.sock")
    sched = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sched.bind(str(tmp_path / "sched.sock"))
    sched.listen(4)
    sched.settimeout(5)
    points = {p["point"] for p in svc.control({"op": "state"})["inject"]}
    assert points == {"queue_cast", "queue_bast"}
    for point in points:
        svc.control({"op": "inject", "point": point, "action": f"sched:{tmp_path}/sched.sock"})

    def arrival() -> tuple[socket.socket, dict]:
        conn, _ = sched.accept()
        conn.settimeout(5)
        buf = b""
        while b"\n" not in buf:
            buf += conn.recv(4096)
        return conn, json.loads(buf.split(b"\n", 1)[0])

    n1, n2 = Node(path, "node1"), Node(path, "node2")
    me = os.getpid()
    n1.send({"op": "lock", "res": "2/a", "mode": "EX", "rid": 1, "waiters": [[me, "syscall"]]})
    conn, arr = arrival()
    assert (arr["point"], arr["tid"]) == ("queue_cast", me)
    n1.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        n1.recv()  # held at the point
    conn.sendall(b'{"go": true}\n')
    conn.close()
    n1.sock.settimeout(5)
    assert n1.recv() == {"op": "grant", "res": "2/a", "mode": "EX", "rid": 1}
    n2.send({"op": "lock", "res": "2/a", "mode": "PR", "rid": 2, "waiters": [[me, "fault"]]})
    conn, arr = arrival()
    assert (arr["point"], arr["tid"]) == ("queue_bast", me)  # the task whose request it is
    conn.sendall(b'{"go": true}\n')
    conn.close()
    assert n1.recv() == {"op": "bast", "res": "2/a", "mode": "PR"}
    n1.sock.close()
    n2.sock.close()
    sched.close()
