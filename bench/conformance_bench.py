"""Long runs of the union's conformance harness (issue 9): generated POSIX operation sequences
on a stackfs union and on a plain directory side by side, every result compared.

    /opt/stackfs-venv/bin/python bench/conformance_bench.py [--ops 10000] [--tree mixed]
        [--seed 9] [--seeds N] [--options timeout=0] [--check-every 50] [--dir /var/tmp]

Each seed is one fresh tree (``--tree``: ``upper``, ``lower``, ``mixed`` or ``all``), one mount
(``-o`` defaults plus ``--options``), ``--ops`` operations and a whole-tree comparison every
``--check-every`` operations and after a remount at the end. Prints one line per run (operations,
errno counts, seconds, operations per second) and exits 1 at the first difference, with the
operations that led to it. The CI test (tests/union/test_union_conformance.py) runs the same
code with a fixed seed and a few hundred operations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a checkout without the editable install

from stackfs.runtime import lifecycle
from stackfs.union import conformance  # noqa: E402


def one_run(base: str, tree: str, seed: int, ops: int, options: str, every: int) -> bool:
    root = tempfile.mkdtemp(prefix=f"conformance-{tree}-{seed}-", dir=base)
    try:
        for n in ("upper", "l1", "l2", "work", "mp", "plain"):
            os.mkdir(os.path.join(root, n))
        layers = conformance.Layers([f"{root}/upper", f"{root}/l1", f"{root}/l2"], f"{root}/plain")
        conformance.build_tree(tree, layers, seed)
        opts = f"lowerdir={root}/l1:{root}/l2,upperdir={root}/upper,workdir={root}/work"
        if options:
            opts += "," + options
        argv = lifecycle.stackfs_argv("mount", "-o", opts, "-f", f"{root}/mp")
        with lifecycle.Stack() as stack:
            m = stack.mount(argv, f"{root}/mp")
            t0 = time.monotonic()
            try:
                rep = conformance.run(
                    layers, f"{root}/mp", seed=seed, ops=ops, tree=tree, check_every=every
                )
                stack.mounts.remove(m)
                lifecycle.unmount(m)
                stack.mount(argv, f"{root}/mp")
                after = conformance.compare_trees(f"{root}/mp", layers.plain)
                if after:
                    raise conformance.Difference("after a remount:\n  " + "\n  ".join(after[:20]))
            except conformance.Difference as exc:
                print(f"DIFFERENCE tree={tree} seed={seed}: {exc}")
                return False
            dt = time.monotonic() - t0
        errs = " ".join(f"{k}={v}" for k, v in sorted(rep.errors.items()))
        print(
            f"tree={tree} seed={seed} ops={rep.ops} no difference "
            f"({rep.compared} comparisons, {dt:.1f} s, {rep.ops / dt:.0f} ops/s; errno: {errs})",
            flush=True,
        )
        return True
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=10_000, help="operations per run (10000)")
    p.add_argument("--tree", default="mixed", choices=[*conformance.TREES, "all"])
    p.add_argument("--seed", type=int, default=9, help="first seed (9, the CI's)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    p.add_argument("--options", default="", help="extra -o options of the union mount")
    p.add_argument("--check-every", type=int, default=50, help="whole-tree comparison period")
    p.add_argument("--dir", default="/var/tmp", help="scratch directory (ext4 or the like)")
    a = p.parse_args(argv)
    trees = conformance.TREES if a.tree == "all" else (a.tree,)
    ok = True
    for seed in range(a.seed, a.seed + a.seeds):
        for tree in trees:
            ok = one_run(a.dir, tree, seed, a.ops, a.options, a.check_every) and ok
            if not ok:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
