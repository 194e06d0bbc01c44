"""A daemon's side of a scheduled injection point (``POINT=sched:SOCKET``).

The arriving trio task connects to the run's scheduler (:mod:`stackfs.repro.schedserver`) on
the unix socket SOCKET, says who it is and where (one JSON line: ``{"op": "arrive", "daemon":
PID, "point": NAME, "tid": TID, "comm": COMM, "chain": [...]}``) and waits for the answer
``{"go": true}``. The task stays in the point's ``waiting`` list meanwhile, so the watchdog
sees it held at an injection point (the testbed's, not a hang). A scheduler that cannot be
reached, or that closes the connection, lets the task go: nothing waits for a scheduler that
is gone. Waiting is cancellable (an aborted connection, an unmount).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence

import trio

from stackfs.kernel.task import Task


async def wait_for_go(path: str, point: str, task: Task, chain: Sequence[str]) -> bool:
    """Arrive at ``point`` and wait for the scheduler's go; False when no scheduler answered."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except OSError:
        sock.close()
        return False
    stream = trio.SocketStream(sock)
    async with stream:
        arrival = {
            "op": "arrive",
            "daemon": os.getpid(),
            "point": point,
            "tid": task.pid,
            "comm": task.comm,
            "chain": list(chain),
        }
        try:
            await stream.send_all(json.dumps(arrival).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                data = await stream.receive_some(4096)
                if not data:
                    return False
                buf += data
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
    try:
        return bool(json.loads(buf.split(b"\n", 1)[0]).get("go"))
    except ValueError:
        return False
