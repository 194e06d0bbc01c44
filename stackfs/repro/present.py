"""Terminal output of ``stackfs repro`` and ``stackfs demo``: tables, colours, a progress bar."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any, TextIO

#: symbols that mailing lists and old terminals mangle, and what ``--ascii`` prints instead
ASCII_SYMBOLS = str.maketrans(
    {
        "\u2713": "ok",
        "\u2717": "FAIL",
        "\u00d7": "x",
        "\u2192": "->",
        "\u2190": "<-",
        "\u2014": "--",
        "\u2013": "-",
        "\u2026": "...",
        "\u00b5": "u",
        "\u2264": "<=",
        "\u2265": ">=",
    }
)
#: set by ``stackfs --ascii`` and when stdout is not a terminal
ASCII = False


def plain(text: str) -> str:
    """``text`` with the symbols of :data:`ASCII_SYMBOLS` spelled in ASCII, in ASCII mode."""
    return text.translate(ASCII_SYMBOLS) if ASCII else text


class AsciiStream:
    """A text stream that writes :func:`plain` text: what ``--ascii`` puts on stdout/stderr."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(ASCII_SYMBOLS))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def set_ascii(on: bool) -> None:
    """ASCII mode: every symbol of :data:`ASCII_SYMBOLS` on stdout and stderr in ASCII."""
    global ASCII
    ASCII = on
    if on:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, AsciiStream):
                setattr(sys, name, AsciiStream(stream))


def color_ok(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class Style:
    """ANSI styles, or nothing when the stream is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.on = color_ok(stream)

    def _w(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def bold(self, t: str) -> str:
        return self._w("1", t)

    def dim(self, t: str) -> str:
        return self._w("2", t)

    def green(self, t: str) -> str:
        return self._w("32", t)

    def red(self, t: str) -> str:
        return self._w("31;1", t)


def visible_len(text: str) -> int:
    out, i = 0, 0
    while i < len(text):
        if text[i] == "\033":
            j = text.find("m", i)
            i = j + 1 if j >= 0 else len(text)
            continue
        out += 1
        i += 1
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """A plain aligned table (cells may carry ANSI styles)."""
    headers = [plain(h) for h in headers]
    rows = [[plain(c) for c in row] for row in rows]
    widths = [visible_len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c + " " * (widths[i] - visible_len(c)) for i, c in enumerate(cells)]
        return (indent + "  ".join(parts)).rstrip()

    out = [line(headers), indent + "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def seconds(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} {unit}"


def wrap(text: str, indent: str = "  ", width: int | None = None) -> str:
    w = width or min(100, shutil.get_terminal_size((100, 20)).columns)
    return textwrap.fill(text, width=w, initial_indent=indent, subsequent_indent=indent)


class ProgressBar:
    """``[#####.....] 3/10  label`` on one line of a terminal, redrawn in place."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = self.stream.isatty()
        self.t0 = time.monotonic()
        self._last = ""

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        el = time.monotonic() - self.t0
        text = f"[{bar}] {done}/{self.total} {el:5.1f}s  {label}"
        cols = shutil.get_terminal_size((100, 20)).columns
        text = text[: cols - 1]
        self.stream.write("\r" + text + " " * max(0, len(self._last) - len(text)))
        self.stream.flush()
        self._last = text

    def clear(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r" + " " * len(self._last) + "\r")
            self.stream.flush()
            self._last = ""
