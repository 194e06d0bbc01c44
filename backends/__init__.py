"""FUSE backends: a store directory (the server) seen through a personality (the client).

:data:`PERSONALITIES` maps a kind to its class (imported on demand); each class lists its
``variants`` (name -> description, the first is the default), ``injection_points`` and
``extra_options``. ``stackfs backend list`` prints them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from backends.base import StoreFS

#: kind -> "module:Class"
PERSONALITIES: dict[str, str] = {
    "passthrough": "backends.passthrough:PassthroughFS",
    "afs": "backends.afs:AFSFS",
    "nfs": "backends.nfs:NFSFS",
    "lustre": "backends.lustre:LustreFS",
    "gfs2": "backends.gfs2:Gfs2FS",
    "autofs": "backends.autofs:AutofsFS",
}


def kinds() -> list[str]:
    """Every listed personality. A listed personality's module must exist: nothing here drops a
    kind whose import fails; :func:`personality` raises for it."""
    return list(PERSONALITIES)


def personality(kind: str) -> type[StoreFS]:
    """The class of personality ``kind``; KeyError if unknown. A listed personality whose module
    or class cannot be imported is a broken install: the ImportError (with the kind and the
    module it names) propagates."""
    spec = PERSONALITIES[kind]
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except AttributeError as exc:
        raise ImportError(f"backend {kind!r}: {module} has no class {name}") from exc
    return cast("type[StoreFS]", cls)


def variants(kind: str) -> dict[str, str]:
    """Variant name -> description of personality ``kind``."""
    return dict(personality(kind).variants)
