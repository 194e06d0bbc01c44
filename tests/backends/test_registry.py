"""The personality table: every listed backend imports, and a broken one fails loudly."""

from __future__ import annotations

import pytest

import backends
from backends.base import StoreFS


def test_every_listed_personality_imports() -> None:
    assert backends.kinds() == list(backends.PERSONALITIES)
    for kind in backends.kinds():
        cls = backends.personality(kind)
        assert issubclass(cls, StoreFS), kind
        assert cls.variants, kind


def test_a_broken_personality_is_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.PERSONALITIES, "broken", "backends.no_such_module:BrokenFS")
    monkeypatch.setitem(backends.PERSONALITIES, "noclass", "backends.passthrough:NoSuchFS")
    assert "broken" in backends.kinds() and "noclass" in backends.kinds()
    with pytest.raises(ImportError, match="no_such_module"):
        backends.personality("broken")
    with pytest.raises(ImportError, match="has no class NoSuchFS"):
        backends.personality("noclass")


def test_one_vocabulary_of_variant_names_with_the_scenarios() -> None:
    """A scenario names each backend's variant by the backend's own name for it (not an
    alias), and the old names stay as aliases (issue 26 item 2). autofs: issue 23."""
    from stackfs.repro import registry

    afs = backends.personality("afs")
    assert afs.resolve_variant("fixed") == "fixed-afs" == afs.resolve_variant("fixed-afs")
    assert afs.resolve_variant(None) == "buggy"
    with pytest.raises(ValueError, match=r"unknown variant 'nope' of afs .*fixed \(= fixed-afs\)"):
        afs.resolve_variant("nope")
    for scenario in registry.scenarios():
        for v in scenario.variants:
            for kind, name in v.params.items():
                if kind in backends.kinds() and kind != "autofs":
                    assert name in backends.personality(kind).variants, (scenario.name, v.name)
