"""``/dev/kmsg``: write a report's findings into the kernel log, and read records back.

The records come from :mod:`stackfs.watchdog.kernfmt` (the kernel's formats, each line tagged
``stackfs[PID]: `` or ``stackfs-model[PID]: ``). One record per line, as ``printk`` makes them,
each ending with a newline: a record without one stays open for a continuation and readers do
not see it until the next record arrives. ``printk_devkmsg=ratelimit`` (the default) lets one
open file write a burst of 10 records per 5 s, so records go out in batches of at most 10, each
through its own open of /dev/kmsg; with ``printk_devkmsg=off`` the kernel refuses writers and
:class:`KmsgError` says so. :class:`Reader` reads what is logged after it opened (``SEEK_END``),
without clearing the log, as a test or a harness checking dmesg needs.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stackfs.watchdog.kernfmt import LOG_USER, Record, render

__all__ = ["KMSG", "LOG_USER", "KmsgError", "LogRecord", "Reader", "write", "write_report"]

KMSG = "/dev/kmsg"
#: devkmsg's per-open burst under printk_devkmsg=ratelimit (DEFAULT_RATELIMIT_BURST)
BURST = 10


class KmsgError(Exception):
    """The kernel log cannot be written (no /dev/kmsg, not root, printk_devkmsg=off)."""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


# -- writing and reading /dev/kmsg -------------------------------------------------------------


def _batches(records: list[Record], n: int) -> Iterator[list[Record]]:
    for i in range(0, len(records), n):
        yield records[i : i + n]


def write(records: Iterable[Record], path: str = KMSG, pid: int | None = None) -> int:
    """Write the records, one ``write()`` each, in batches of :data:`BURST` per open file."""
    recs = list(records)
    for batch in _batches(recs, BURST):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            mode = _read("/proc/sys/kernel/printk_devkmsg")
            why = (
                " (printk_devkmsg is off: echo ratelimit > /proc/sys/kernel/printk_devkmsg)"
                if mode == "off"
                else ""
            )
            raise KmsgError(f"cannot write {path}: {exc.strerror}{why}") from None
        try:
            for r in batch:
                os.write(fd, r.raw(pid))
        except OSError as exc:
            raise KmsgError(f"writing {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
    return len(recs)


def write_report(report: dict[str, Any], path: str = KMSG) -> int:
    """Write ``report``'s findings to the kernel log; the number of records written."""
    return write(render(report), path)


@dataclass
class LogRecord:
    """One record read back from /dev/kmsg."""

    level: int
    facility: int
    seq: int
    usec: int
    text: str


def _unescape(text: str) -> str:
    """/dev/kmsg escapes bytes outside printable ASCII, and ``\\``, as ``\\xNN``."""
    if "\\x" not in text:
        return text
    out = bytearray()
    i, raw = 0, text.encode()
    while i < len(raw):
        if raw[i : i + 2] == b"\\x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode(errors="replace")


class Reader:
    """Reads kernel log records written after it was opened (``SEEK_END``), never clearing
    the log: ``with Reader() as r: ...; records = r.read()``."""

    def __init__(self, path: str = KMSG) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[LogRecord]:
        out = []
        while True:
            try:
                data = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: go on
                    continue
                raise
            if not data:
                break
            head, _, body = data.decode(errors="replace").partition(";")
            fields = head.split(",")
            pri = int(fields[0])
            out.append(
                LogRecord(
                    pri & 7,
                    pri >> 3,
                    int(fields[1]),
                    int(fields[2]),
                    _unescape(body.split("\n", 1)[0]),
                )
            )
        return out

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
