"""Concurrent mkdir/rmdir/rename/stat/chmod on overlapping names (issue 21, item 4): stackfs
against the kernel's overlayfs and plain ext4 and tmpfs directories, measured in the same run.

    /opt/stackfs-venv/bin/python bench/union_dirstress.py [--seconds 600] [--peer-seconds S]
        [--procs 8] [--only stackfs,overlayfs,ext4,tmpfs] [--options timeout=0] [--dir /var/tmp]

Every peer gets the same layout: a directory ``stress`` that exists in the lower branch with
``d0`` and ``d1/s`` in it (the union and overlayfs over one upper and one lower branch, on
ext4 under ``--dir``; the plain directories with the same names), then ``--procs`` processes
run :func:`stackfs.union.dirstress.run` in it for ``--seconds`` (stackfs) or ``--peer-seconds``
(the others; default the same). Prints one line per peer (operations, rate, errno counts,
ESTALE and EIO always shown) and exits 1 when stackfs gave any errno outside the expected
ones (EEXIST, ENOENT, ENOTEMPTY, ENOTDIR, EINVAL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # a checkout without the editable install

from stackfs.runtime import lifecycle
from stackfs.union import dirstress  # noqa: E402

PEERS = ("stackfs", "overlayfs", "ext4", "tmpfs")


def _layout(lower: str) -> None:
    os.makedirs(os.path.join(lower, "stress", "d0"))
    os.makedirs(os.path.join(lower, "stress", "d1", dirstress.SUB))


def _stress(label: str, base: str, a: argparse.Namespace, seconds: float) -> dirstress.Report:
    rep = dirstress.run(base, procs=a.procs, seconds=seconds, seed=a.seed)
    print(dirstress.format_report(label, rep), flush=True)
    return rep


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {p.stderr.strip() or p.returncode}")


def _umount(mp: str) -> None:
    if subprocess.run(["umount", mp], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def one_peer(peer: str, root: str, a: argparse.Namespace) -> dirstress.Report:
    for n in ("upper", "lower", "work", "mp"):
        os.mkdir(os.path.join(root, n))
    upper, lower, work, mp = (os.path.join(root, n) for n in ("upper", "lower", "work", "mp"))
    seconds = a.seconds if peer == "stackfs" else a.peer_seconds
    if peer == "ext4":
        _layout(mp)
        return _stress(peer, os.path.join(mp, "stress"), a, seconds)
    if peer == "tmpfs":
        _run(["mount", "-t", "tmpfs", "-o", "size=64m", "stackfs-dirstress", mp])
        try:
            _layout(mp)
            return _stress(peer, os.path.join(mp, "stress"), a, seconds)
        finally:
            _umount(mp)
    _layout(lower)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if peer == "overlayfs":
        _run(["mount", "-t", "overlay", "overlay", "-o", opts, mp])
        try:
            return _stress(peer, os.path.join(mp, "stress"), a, seconds)
        finally:
            _umount(mp)
    if a.options:
        opts += "," + a.options
    with lifecycle.Stack() as stack:
        stack.mount(lifecycle.stackfs_argv("mount", "-o", opts, "-f", mp), mp)
        return _stress(peer, os.path.join(mp, "stress"), a, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="stackfs' run (600 s)")
    p.add_argument("--peer-seconds", type=float, default=None, help="the others' (--seconds)")
    p.add_argument("--procs", type=int, default=8, help="processes (8)")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--only", default=",".join(PEERS), help="comma-separated peers")
    p.add_argument("--options", default="", help="extra -o options of the stackfs mount")
    p.add_argument("--dir", default="/var/tmp", help="scratch directory on ext4")
    a = p.parse_args(argv)
    if a.peer_seconds is None:
        a.peer_seconds = a.seconds
    peers = [x for x in a.only.split(",") if x]
    unknown = set(peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    print(
        f"union_dirstress: {a.procs} processes, {os.uname().release}, {os.cpu_count()} cores; "
        f"stackfs {a.seconds:.0f} s, peers {a.peer_seconds:.0f} s each",
        flush=True,
    )
    bad = False
    for peer in peers:
        root = tempfile.mkdtemp(prefix=f"dirstress-{peer}-", dir=a.dir)
        try:
            rep = one_peer(peer, root, a)
            if peer == "stackfs" and rep.unexpected():
                bad = True
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
