"""Command lines of the testbed's layers, as the reproducers and the pytest plugin mount them.

Every layer is its own daemon started in the foreground (``-f``) by
:meth:`stackfs.runtime.lifecycle.Stack.mount`, which returns once the mount is live:

* a backend: ``stackfs backend mount KIND --store DIR --variant V [-o OPT]... -f MNT``
  (``-o inject=POINT=ACTION`` sets an injection point at mount time);
* the union: ``stackfs mount -o br=UPPER=rw:LOWER=ro[:...][,copyup=MODE][,OPT...] -f MNT``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from stackfs.runtime import lifecycle
from stackfs.union.options import escape_path

PathLike = str | os.PathLike[str]


def backend_argv(
    kind: str,
    store: PathLike,
    mountpoint: PathLike,
    *,
    variant: str | None = None,
    inject: Iterable[str] = (),
    options: Iterable[str] = (),
) -> list[str]:
    """``python -m stackfs backend mount KIND --store STORE [--variant V] [-o ...] -f MNT``."""
    argv = lifecycle.stackfs_argv("backend", "mount", kind, "--store", os.fspath(store))
    if variant:
        argv += ["--variant", variant]
    for opt in options:
        argv += ["-o", opt]
    for spec in inject:
        argv += ["-o", f"inject={spec}"]
    argv += ["-f", os.fspath(mountpoint)]
    return argv


def union_argv(
    upper: PathLike | None,
    lowers: Sequence[PathLike],
    mountpoint: PathLike,
    *,
    copyup: str | None = None,
    inject: Iterable[str] = (),
    options: Iterable[str] = (),
) -> list[str]:
    """``python -m stackfs mount -o br=UPPER=rw:LOWER=ro...[,copyup=MODE][,...] -f MNT``."""
    branches = ([f"{escape_path(os.fspath(upper))}=rw"] if upper is not None else []) + [
        f"{escape_path(os.fspath(lo))}=ro" for lo in lowers
    ]
    # fastpath=off: the reproducers keep the kernel paths of the seeds (OPEN, copy-up at open,
    # OPENDIR, write-through); issue 15's fast paths are for standalone use
    opts = ["br=" + ":".join(branches), "fastpath=off"]
    if copyup:
        opts.append(f"copyup={copyup}")
    opts.extend(options)
    opts.extend(f"inject={spec}" for spec in inject)
    return lifecycle.stackfs_argv("mount", "-o", ",".join(opts), "-f", os.fspath(mountpoint))
