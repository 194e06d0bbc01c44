"""The conformance harness (stackfs.union.conformance): generated POSIX operation sequences on
the union and on a plain directory side by side, every result compared, for trees in the upper
branch only, in the lower branches only and in all of them.

CI runs a fixed seed and a few hundred operations per tree; ``STACKFS_CONFORMANCE_OPS`` and
``STACKFS_CONFORMANCE_SEED`` make it a long run (``bench/conformance_bench.py`` does that and
reports the figures). Every fifth operation is followed by one aimed at the union's own
metadata (``user.overlay.*`` xattrs with redirect and opaque values, ``trusted.overlay.*``,
``.wh.*`` names, 0/0 character devices): refused, hidden, or plain user data, per mode.
"""

from __future__ import annotations

import os

import pytest

from stackfs.union import conformance

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

OPS = int(os.environ.get("STACKFS_CONFORMANCE_OPS", "300"))
SEED = int(os.environ.get("STACKFS_CONFORMANCE_SEED", "9"))


@pytest.mark.parametrize(
    "tree,options",
    [
        ("upper", "default"),
        ("lower", "default"),
        ("mixed", "default"),
        ("mixed", "timeout=0"),
        ("mixed", "userxattr"),
    ],
)
def test_conformance(union, tmp_path, tree, options):
    plain = tmp_path / "plain"
    plain.mkdir()
    layers = conformance.Layers([str(union.upper), str(union.l1), str(union.l2)], str(plain))
    conformance.build_tree(tree, layers, SEED)
    union.mount(*([] if options == "default" else [options]))
    # the tree as built is the same through the union
    assert conformance.compare_trees(str(union.mp), str(plain)) == []
    userxattr = options == "userxattr"
    rep = conformance.run(layers, str(union.mp), seed=SEED, ops=OPS, tree=tree, userxattr=userxattr)
    assert rep.ops == OPS
    # and one operation on the union's metadata (docs/security.md) after every 5
    assert rep.meta == OPS // 5
    # the sequence met the interesting cases, not only successes
    assert {"ENOENT", "EEXIST"} <= set(rep.errors), rep.errors
    # the same after a remount (pseudo-links, xino, whiteouts and redirects read back)
    union.remount()
    assert conformance.compare_trees(str(union.mp), str(plain)) == []
