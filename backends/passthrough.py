"""The passthrough personality: :class:`~backends.base.StoreFS` as it is.

The store is a plain directory that the kernel sees through FUSE, with nothing modelled on top:
the reference the other personalities are compared with, and a lower branch for the union.
"""

from __future__ import annotations

from backends.base import StoreFS


class PassthroughFS(StoreFS):
    """A complete passthrough filesystem over the store (cp, mv, tar, rsync and git work)."""

    kind = "passthrough"
    variants = {"default": "plain passthrough; a server change invalidates the kernel's caches"}
