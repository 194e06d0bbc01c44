"""The lock manager's resources on their own (stackfs.kernel.dlm): mode compatibility,
queueing in order, blocking ASTs once per holder, conversions down, a node leaving."""

from __future__ import annotations

import pytest

from stackfs.kernel.dlm import DLM, MODES, Action, compatible


def test_compatibility_matrix():
    assert all(compatible("NL", m) and compatible(m, "NL") for m in MODES)
    assert compatible("PR", "PR") and compatible("CR", "PW")
    assert not compatible("PR", "EX") and not compatible("EX", "CR")
    assert not compatible("PW", "PR") and compatible("CW", "CW")
    for a in MODES:
        for b in MODES:
            assert compatible(a, b) == compatible(b, a)
    with pytest.raises(ValueError):
        compatible("XX", "NL")


def test_a_compatible_conversion_goes_ahead_of_the_queue_and_a_try_is_not_queued():
    """fs/dlm's ``_can_be_granted`` with ``now``: a conversion compatible with what the other
    nodes hold is granted at once, ahead of a queued request (GFS2's demote from SH to DF is
    such a conversion: PR -> CW); ``DLM_LKF_NOQUEUE`` (GFS2's ``LM_FLAG_TRY_1CB``): what
    cannot be granted at once is answered with the mode held, and nothing is queued."""
    d = DLM()
    d.lock("fs", "2/a", "n1", "PR", 1)
    assert [a.kind for a in d.lock("fs", "2/a", "n2", "CW", 2)] == ["bast"]
    assert d.lock("fs", "2/a", "n1", "CW", 3) == [
        Action("grant", "n1", "fs", "2/a", "CW", 3),
        Action("grant", "n2", "fs", "2/a", "CW", 2),  # DF with DF: both nodes hold it
    ]
    # n1 back to PR while n2 holds CW: a try is refused at once, with the mode n1 holds
    assert d.lock("fs", "2/a", "n1", "PR", 4, try_=True) == [
        Action("grant", "n1", "fs", "2/a", "CW", 4)
    ]
    res = d.resource("fs", "2/a")
    assert res.queue == [] and res.granted == {"n1": "CW", "n2": "CW"}
    # not a try: queued, and n2 is asked to demote
    assert d.lock("fs", "2/a", "n1", "PR", 5) == [Action("bast", "n2", "fs", "2/a", "PR")]
    # a conversion down never waits (the old rule, kept)
    assert d.lock("fs", "2/a", "n2", "NL", 6) == [
        Action("grant", "n2", "fs", "2/a", "NL", 6),
        Action("grant", "n1", "fs", "2/a", "PR", 5),
    ]


def test_grant_queue_bast_and_demote():
    d = DLM()
    assert d.lock("fs", "2/a", "n1", "PR", 1) == [Action("grant", "n1", "fs", "2/a", "PR", 1)]
    assert d.lock("fs", "2/a", "n2", "PR", 1) == [Action("grant", "n2", "fs", "2/a", "PR", 1)]
    # an EX request waits; both PR holders get one blocking AST each
    acts = d.lock("fs", "2/a", "n3", "EX", 7)
    assert sorted((a.kind, a.node, a.mode) for a in acts) == [
        ("bast", "n1", "EX"),
        ("bast", "n2", "EX"),
    ]
    # a later PR request queues behind the EX (no overtaking), and sends no new AST
    assert d.lock("fs", "2/a", "n4", "PR", 2) == []
    res = d.resource("fs", "2/a")
    assert [r.node for r in res.queue] == ["n3", "n4"]
    # n1 demotes to NL (granted at once); n2 still blocks the EX
    assert d.lock("fs", "2/a", "n1", "NL", 3) == [Action("grant", "n1", "fs", "2/a", "NL", 3)]
    # n2 leaves: the EX is granted, and n4's PR, next in line, sends n3 a blocking AST
    assert d.unlock("fs", "2/a", "n2") == [
        Action("grant", "n3", "fs", "2/a", "EX", 7),
        Action("bast", "n3", "fs", "2/a", "PR"),
    ]
    assert d.snapshot()[0]["basts"] == [{"node": "n3", "wanted": "PR"}]
    assert d.lock("fs", "2/a", "n3", "PR", 8) == [
        Action("grant", "n3", "fs", "2/a", "PR", 8),
        Action("grant", "n4", "fs", "2/a", "PR", 2),
    ]


def test_node_leaving_releases_its_locks():
    d = DLM()
    d.lock("fs", "2/a", "n1", "EX", 1)
    d.lock("other", "2/a", "n1", "EX", 1)
    assert [a.kind for a in d.lock("fs", "2/a", "n2", "PR", 2)] == ["bast"]
    assert d.purge_node("n1", "fs") == [Action("grant", "n2", "fs", "2/a", "PR", 2)]
    # the same node in another lockspace keeps its lock
    assert d.resource("other", "2/a").granted == {"n1": "EX"}


def test_lockspaces_are_separate():
    d = DLM()
    d.lock("fsa", "2/a", "n1", "EX", 1)
    assert d.lock("fsb", "2/a", "n2", "EX", 1) == [Action("grant", "n2", "fsb", "2/a", "EX", 1)]
