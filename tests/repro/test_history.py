"""What each variant stands for (issue 23 item 5): ``stackfs repro show SCENARIO`` prints, per
variant, the kernels and commit and the functions mirrored, from the one ``history`` table a
scenario declares; renamed variants keep their old names (issue 23 item 2), with a note."""

from __future__ import annotations

import subprocess

import pytest

from stackfs.repro import registry
from stackfs.repro.runner import plan
from stackfs.repro.scenario import History
from stackfs.repro.scenarios.autofs_expire import AutofsExpire
from stackfs.runtime import lifecycle


def stackfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lifecycle.stackfs_argv(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("scenario", registry.scenarios(), ids=lambda s: s.name)
def test_every_variant_has_one_history_entry(scenario):
    assert set(scenario.history) == {v.name for v in scenario.variants}
    for h in scenario.history.values():
        assert isinstance(h, History) and h.kernels and h.mirrors
        assert all(f.isidentifier() for f in h.mirrors), h.mirrors  # kernel function names
    for old, new in scenario.variant_aliases.items():
        assert old not in scenario.history and scenario.variant(old).name == new


def test_show_prints_each_variants_history():
    res = stackfs("repro", "show", "autofs-create")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for v in registry.get("autofs-create").variants:
        assert f"variant {v.name} -> {v.expect}" in out
    assert "commit:  1864f7bd58351732593def024e73eca1f75bc352" in out
    assert "mirrors: autofs4_lookup, d_instantiate, autofs4_dir_mkdir, d_add" in out
    assert "kernels: 2.6.22 and earlier" in out


def test_show_unknown_scenario_is_a_one_line_error():
    res = stackfs("repro", "show", "no-such-scenario")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("stackfs: "), res.stderr


def test_autofs_expire_variants_are_named_after_root_c():
    """The expire race was 2.6.18's (a new dentry's mount request joins the expire's queue);
    the rehash list fixed it, not the look-aside list, whose old name still works."""
    assert [v.name for v in AutofsExpire.variants] == ["buggy", "fixed-rehash", "fixed-2.6.38"]
    assert AutofsExpire.variant("buggy").params == {"autofs": "2.6.18"}
    assert plan(AutofsExpire, "fixed-lookaside").variants == ["fixed-rehash"]
    note = AutofsExpire.alias_note("fixed-lookaside")
    assert note is not None and "'fixed-rehash'" in note
    assert AutofsExpire.alias_note("fixed-rehash") is None
    res = stackfs("repro", "run", "autofs-expire", "--variant", "fixed-lookaside", "--case", "x")
    assert res.returncode == 2  # the bad case stops it, after the alias was resolved and noted
    assert "variant 'fixed-lookaside' is now called 'fixed-rehash'" in res.stderr


def test_the_rehash_list_is_dated_by_its_commit():
    """The rehash list is f50b6f8691ca ("autofs4: fix another race between mount and expire",
    2.6.21), read in a tree with mainline's root.c history; 2.6.20 had no rehash list."""
    h = AutofsExpire.history["fixed-rehash"]
    assert h.commit == "f50b6f8691cae2e0064c499dd3ef3f31142987f0"
    assert h.kernels.startswith("2.6.21")
    assert AutofsExpire.history["buggy"].kernels.startswith("2.6.20 and earlier")
