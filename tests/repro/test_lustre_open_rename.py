"""Seed 002's scenario beyond the forced runs of test_scenarios.py: the per-case expectations it
declares (derived from the Lustre code, docs/seed-002-lustre.md) and LU-14949 in natural mode,
where every open must be correct whether or not the rename hit the window."""

from __future__ import annotations

import pytest

from stackfs.repro import registry
from stackfs.repro.scenario import COMPLETES, Variant, error


def test_variant_per_case_expectation():
    v = Variant("buggy", error("ENOENT"), "x", per_case={"create": COMPLETES})
    assert v.expect_for("cat") == "error:ENOENT"
    assert v.expect_for("create") == COMPLETES
    assert v.is_bug and v.is_bug_in("cat") and not v.is_bug_in("create")
    assert not Variant("fixed", COMPLETES, "x").is_bug
    assert Variant("f", COMPLETES, "x", per_case={"c": error("ESTALE")}).is_bug
    with pytest.raises(ValueError):
        Variant("bad", COMPLETES, "x", per_case={"cat": "crashes"})


def test_expectations_per_variant_and_case():
    s = registry.get("lustre-open-rename")
    table = {(v.name, c.name): v.expect_for(c.name) for v in s.variants for c in s.cases}
    assert table == {
        ("buggy", "cat"): "error:ENOENT",
        ("buggy", "create"): COMPLETES,
        ("buggy", "contended"): COMPLETES,
        ("lu-8371", "cat"): "error:ENOENT",
        ("lu-8371", "create"): COMPLETES,
        ("lu-8371", "contended"): COMPLETES,
        ("lu-14949", "cat"): COMPLETES,
        ("lu-14949", "create"): COMPLETES,
        ("lu-14949", "contended"): COMPLETES,
        ("estale-by-fid", "cat"): "error:ENOENT",
        ("estale-by-fid", "create"): COMPLETES,
        ("estale-by-fid", "contended"): "error:ESTALE",
    }


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["cat", "contended"])
def test_lu14949_natural_every_open_correct(stackfs_repro, case):
    r = stackfs_repro("lustre-open-rename", "lu-14949", case, natural=True)
    detail = f"{r.observed}: {r.summary}; {r.problems}; {r.report_dir}"
    assert r.observed == COMPLETES and r.matched and r.recovered, detail
    assert all(p.ok for p in r.processes), detail
