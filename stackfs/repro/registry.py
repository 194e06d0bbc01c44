"""The registry of reproducers: ``@register`` a :class:`~stackfs.repro.scenario.Scenario`
subclass; :func:`scenarios` loads every module of :mod:`stackfs.repro.scenarios` once."""

from __future__ import annotations

import importlib
import pkgutil

from stackfs.repro.scenario import Scenario

_REGISTRY: dict[str, type[Scenario]] = {}
_loaded = False


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: make ``cls`` known to ``stackfs repro`` and the demo."""
    for attr in ("name", "seed", "summary", "description", "variants"):
        if not getattr(cls, attr, None):
            raise TypeError(f"scenario {cls.__name__} does not set {attr}")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"two scenarios named {cls.name!r}: {other!r} and {cls!r}")
    _REGISTRY[cls.name] = cls
    return cls


def load() -> None:
    """Import every module of :mod:`stackfs.repro.scenarios` (they register themselves)."""
    global _loaded
    if _loaded:
        return
    from stackfs.repro import scenarios

    for info in sorted(pkgutil.iter_modules(scenarios.__path__), key=lambda m: m.name):
        importlib.import_module(f"{scenarios.__name__}.{info.name}")
    _loaded = True


def scenarios() -> list[type[Scenario]]:
    """Every registered scenario, by seed then name."""
    load()
    return sorted(_REGISTRY.values(), key=lambda s: (s.seed, s.name))


def get(name: str) -> type[Scenario]:
    """The scenario called ``name``; KeyError with a one-line message if there is none."""
    load()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(s.name for s in scenarios()) or "none"
        raise KeyError(f"no scenario {name!r} (known: {known})") from None
