"""Backend mount options: ``-o NAME=VALUE`` for the personality, the rest for FUSE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stackfs.optvalue import integer, seconds

#: the largest count an integer option takes (``rendezvous``: writers met at the lock manager)
MAX_COUNT = 65535


@dataclass(frozen=True)
class Option:
    """A backend mount option (``-o NAME=VALUE`` or ``-o NAME`` for flags)."""

    name: str
    kind: type  # float, int, bool, str
    default: Any
    help: str

    def parse(self, text: str | None) -> Any:
        """The value ``-o NAME=TEXT`` gives (numbers through :mod:`stackfs.optvalue`: no
        ``inf``, ``nan``, exponent or sign); a ``ValueError`` names the option."""
        if self.kind is bool:
            if text is None or text.lower() in ("1", "yes", "true", "on"):
                return True
            if text.lower() in ("0", "no", "false", "off"):
                return False
            raise ValueError(f"option {self.name}: expected a boolean, got {text!r}")
        if text is None:
            raise ValueError(f"option {self.name} needs a value ({self.name}=...)")
        if self.kind is float:  # every float option of a backend is a number of seconds
            return seconds(self.name, text)
        if self.kind is int:
            return integer(self.name, text, 0, MAX_COUNT)
        return self.kind(text)


BASE_OPTIONS = (
    Option("entry_timeout", float, 1.0, "seconds the kernel may cache a name"),
    Option("attr_timeout", float, 1.0, "seconds the kernel may cache attributes"),
    Option("panic_on_oops", bool, False, "stop serving after a model oops (a panicking kernel)"),
)


def split_options(
    options: Sequence[Option], specs: Sequence[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Split ``-o`` arguments into (backend options, FUSE options, injection specs).

    Each spec may hold several comma-separated options. ``inject=POINT=ACTION`` is an
    injection; names in ``options`` (a personality's ``StoreFS.options()``) are ours; anything
    else goes to FUSE.
    """
    known = {o.name: o for o in options}
    own: dict[str, Any] = {o.name: o.default for o in known.values()}
    fuse: list[str] = []
    inject: list[str] = []
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            if name == "inject":
                if not value:
                    raise ValueError("inject needs POINT=ACTION (-o inject=POINT=ACTION)")
                inject.append(value)
            elif name in known:
                own[name] = known[name].parse(value if sep else None)
            else:
                fuse.append(item)
    return own, fuse, inject
