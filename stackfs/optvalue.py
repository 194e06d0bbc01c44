"""Values a mount option takes: decimal seconds and bounded integers, for every ``-o`` parser.

The union's options (``stackfs.union.options``) and the backends' (``backends.options``) both
parse numbers here, so ``timeout=inf``, ``nan``, ``1e400`` or ``-1`` is one error everywhere:
Python's ``float()`` takes all of them, and an infinite timeout then kills a daemon on the first
request (``OverflowError`` converting it to the kernel's nanoseconds).
"""

from __future__ import annotations

import re

#: the longest entry/attribute/negative timeout taken, in seconds (~136 years): a deadline in
#: nanoseconds then stays a signed 64-bit number (the kernel clamps its jiffies deadline too)
MAX_TIMEOUT = 2**32 - 1

_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


class OptionError(ValueError):
    """A bad mount option; the message is one line that starts with the option's name."""


def seconds(key: str, value: str) -> float:
    """A timeout: a plain decimal number of seconds, 0 to :data:`MAX_TIMEOUT` (no ``inf``,
    ``nan``, exponent or sign: ``1e400`` is infinite as a float)."""
    if not _DECIMAL.fullmatch(value) or float(value) > MAX_TIMEOUT:
        raise OptionError(f"{key}: bad value {value!r} (seconds, 0 to {MAX_TIMEOUT})")
    return float(value)


def integer(key: str, value: str, low: int, high: int, unit: str = "") -> int:
    """A plain decimal integer from ``low`` to ``high``."""
    digits = value.isascii() and value.isdigit() and len(value) <= 20
    if not digits or not low <= int(value) <= high:
        raise OptionError(f"{key}: bad value {value!r} ({unit}{low} to {high})")
    return int(value)
