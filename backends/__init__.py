"""FUSE backends: a store directory (the server) seen through a personality (the client).

:data:`PERSONALITIES` maps a kind to its class (imported on demand); each class lists its
``variants`` (name -> description, the first is the default), ``injection_points`` and
``extra_options``. ``stackfs backend list`` prints them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.base import StoreFS

#: kind -> "module:Class"
PERSONALITIES: dict[str, str] = {
    "passthrough": "backends.passthrough:PassthroughFS",
    "afs": "backends.afs:AFSFS",
    "nfs": "backends.nfs:NFSFS",
}


def kinds() -> list[str]:
    """The personalities whose module is present."""
    out = []
    for kind in PERSONALITIES:
        try:
            personality(kind)
        except (ImportError, AttributeError):
            continue
        out.append(kind)
    return out


def personality(kind: str) -> type[StoreFS]:
    """The class of personality ``kind``; KeyError if unknown."""
    spec = PERSONALITIES[kind]
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def variants(kind: str) -> dict[str, str]:
    """Variant name -> description of personality ``kind``."""
    return dict(personality(kind).variants)
