"""The Lustre MDT's request log: what every client mount of one store asked the server, in order.

Lustre clients address files by FID and all of them talk to one metadata server (the MDT); the
seed-002 race is visible only there: client A's LOOKUP answered FID X, client B's rename
destroyed X, client A's OPEN by FID X failed. Every ``lustre`` backend daemon mounted with
``-o mdt=DIR`` appends one JSON line per request to ``DIR/requests.log`` (``O_APPEND``: a line is
one ``write``, so the lines of several daemons never interleave) with the wall-clock time, the
client, the calling task, the operation, the name, the FID(s) and the result. The scenario
reads it back for its per-task timeline, and forced mode's waits read it to order the two
clients (:meth:`MdtLog.looked_up_for_open`).

A FID here is the store object's identity, ``[0xDEV:0xINO:0x0]``: what Lustre's
``[seq:oid:ver]`` names, stable for the object's life and never reused while a client holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_NAME = "requests.log"


def fid_of(st: os.stat_result) -> str:
    """The FID of a store object, Lustre's ``[seq:oid:ver]`` notation."""
    return f"[0x{st.st_dev:x}:0x{st.st_ino:x}:0x0]"


@dataclass
class Request:
    """One line of the MDT's log."""

    t: float
    client: str
    tid: int
    comm: str
    op: str  # LOOKUP, OPEN, RENAME, UNLINK
    name: str
    fid: str | None = None
    result: str = "ok"  # "ok" or an errno name
    #: LOOKUP: "revalidate" (dentry trusted) or "intent-open" (by name, opened in the same
    #: RPC); OPEN: "by-fid" or "intent" (the handle of the LOOKUP's intent open)
    how: str = ""
    #: LOOKUP: the caller's syscall was an open of this name (LOOKUP_OPEN), with O_CREAT
    open_intent: bool = False
    create: bool = False
    #: the VFS's second walk after ESTALE (LOOKUP_REVAL)
    reval: bool = False
    #: RENAME: the FID it destroyed at the target name (and the new name's FID)
    replaced: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        what = f"{self.op}{' (REVAL)' if self.reval else ''} {self.name}"
        if self.op == "RENAME":
            what += f": {self.fid} replaces {self.replaced or 'nothing'}"
        elif self.fid:
            what += f" {'->' if self.op == 'LOOKUP' else 'by'} {self.fid}"
        if self.how:
            what += f" [{self.how}]"
        return what + ("" if self.result == "ok" else f" = -{self.result}")


class MdtLog:
    """The request log in ``directory`` (shared by the client mounts of one store)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOG_NAME

    def append(self, req: Request) -> None:
        line = json.dumps({k: v for k, v in req.__dict__.items() if v not in (None, "", {})})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    def read(self) -> list[Request]:
        out: list[Request] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError, TypeError):
                    out.append(Request(**json.loads(line)))
        return out

    def __iter__(self) -> Iterator[Request]:
        return iter(self.read())

    def opened(self, name: str, other_than: str) -> bool:
        """Whether a client other than ``other_than`` has completed an open of ``name``: the
        open a rename was to race is over."""
        return any(
            r.op == "OPEN" and r.name == name and r.result == "ok" and r.client != other_than
            for r in self.read()
        )

    def looked_up_for_open(self, fid: str, other_than: str) -> bool:
        """Whether a client other than ``other_than`` looked a name up to FID ``fid`` for an
        open (it holds the LOOKUP lock of an IT_OPEN intent: it is about to open ``fid``)."""
        return any(
            r.op == "LOOKUP"
            and r.fid == fid
            and r.open_intent
            and r.client != other_than
            and r.result == "ok"
            for r in self.read()
        )


def now() -> float:
    return time.time()
