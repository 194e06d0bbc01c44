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
