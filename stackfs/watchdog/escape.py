"""Paths are bytes: how a report writes one that is not valid UTF-8 (or not printable).

A path read from /proc (a syscall's string argument, a ``readlink``, mountinfo) or from a daemon
(a request's name) is any sequence of bytes but NUL. The watchdog keeps it as ``str`` decoded
with ``os.fsdecode`` (UTF-8 with ``surrogateescape``: an undecodable byte 0xNN becomes the lone
surrogate U+DCNN), and writes it escaped, the way the kernel's ``seq_escape()`` writes a mount
point into ``/proc/self/mountinfo`` (``string_escape_mem(..., ESCAPE_OCTAL)``): a backslash and
three octal digits per byte. Escaped are

* in a path (:func:`path_text`): every byte that is not part of valid UTF-8, the control bytes
  (0x00-0x1f, 0x7f) and the backslash itself, so a path is one line and reads back unambiguously
  (b"d\\xff\\xfe/f" is written ``d\\377\\376/f``, b"a\\nb" ``a\\012b``);
* in a whole report (:func:`printable`, :func:`printable_json`): every undecodable byte that is
  still in the text (a path that reached it by another way), so report.txt, report.json, the
  DOT file and /dev/kmsg never raise ``UnicodeEncodeError``.
"""

from __future__ import annotations

import os
import re
from typing import Any

#: surrogateescape's stand-ins for undecodable bytes 0x80-0xff
_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: any other lone surrogate (not from a byte: from JSON "\\ud800", say)
_SURROGATE = re.compile("[\ud800-\udfff]")
_PATH_UNSAFE = re.compile("[\x00-\x1f\x7f\\\\\udc80-\udcff]")


def _octal(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    byte = c - 0xDC00 if 0xDC80 <= c <= 0xDCFF else c
    return f"\\{byte:03o}"


def path_text(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A path as a report writes it: undecodable bytes, control bytes and ``\\`` in octal."""
    raw = os.fsencode(path)
    return _PATH_UNSAFE.sub(_octal, raw.decode("utf-8", errors="surrogateescape"))


def printable(text: str) -> str:
    """``text`` with every undecodable byte (a surrogate-escaped one) in octal, and any other
    lone surrogate as ``\\udXXX``: always encodable as UTF-8."""
    if not _SURROGATE.search(text):
        return text
    text = _UNDECODABLE.sub(_octal, text)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def printable_json(obj: Any) -> Any:
    """:func:`printable` on every string (keys too) of a JSON-able object."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable_json(k): printable_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable_json(v) for v in obj]
    return obj
