"""The FUSE request header of the request being dispatched: who sent a READ or a WRITE.

pyfuse3 gives ``read``/``write`` handlers no :class:`pyfuse3.RequestContext`, but the kernel's
``struct fuse_in_header`` carries the calling task's pid on every request (``fuse_get_req``
fills ``in.h.pid`` from ``current``; a page fault's FUSE_READ carries the faulting task's pid).
libfuse logs that header when the session runs with ``debug``
(``fuse_session_process_buf_int``: ``"unique: U, opcode: OP (N), nodeid: I, insize: S,
pid: P"``), through the log function ``fuse_set_log_func`` installs, synchronously and right
before it calls the operation's handler, on the thread that runs the pyfuse3 loop. pyfuse3
then runs the handler's coroutine up to its first suspension without yielding to trio, so the
last header logged is the current request's in the handler's first synchronous lines.

:func:`install` puts a log function in place that keeps that header (and forwards every other
libfuse message to :mod:`logging` at debug level); :func:`current` returns it. A daemon that
uses this mounts with the FUSE option ``debug``.
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass

from stackfs.linux.libc import LIBC

log = logging.getLogger("libfuse")

_HEADER = re.compile(
    rb"unique: (\d+), opcode: (\w+) \((\d+)\), nodeid: (\d+), insize: \d+, pid: (\d+)"
)
_LOG_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@dataclass(frozen=True)
class Header:
    """What ``struct fuse_in_header`` said about a request."""

    unique: int
    opcode: str
    nodeid: int
    pid: int


_last: Header | None = None
_buf = ctypes.create_string_buffer(512)
_callback = None


def _on_log(level: int, fmt: bytes, ap: int) -> None:
    global _last
    # x86-64: a va_list parameter is a pointer to the caller's __va_list_tag, so it can be
    # handed on to vsnprintf as it is
    n = _vsnprintf(_buf, len(_buf), fmt, ap)
    text = _buf.raw[: max(0, min(n, len(_buf) - 1))]
    m = _HEADER.match(text)
    if m is not None:
        _last = Header(int(m[1]), m[2].decode(), int(m[4]), int(m[5]))
    elif level <= 6:
        log.info("%s", text.decode(errors="replace").rstrip())


_vsnprintf = LIBC.vsnprintf
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_vsnprintf.restype = ctypes.c_int


def install() -> bool:
    """Install the log function (once per process); False if libfuse has no
    ``fuse_set_log_func`` (libfuse < 3.7)."""
    global _callback
    if _callback is not None:
        return True
    try:
        lib = ctypes.CDLL("libfuse3.so.3")
        set_log = lib.fuse_set_log_func
    except (OSError, AttributeError):
        return False
    set_log.argtypes = [_LOG_FUNC]
    set_log.restype = None
    _callback = _LOG_FUNC(_on_log)
    set_log(_callback)
    return True


def current() -> Header | None:
    """The header of the request whose handler is starting (see the module docstring)."""
    return _last
