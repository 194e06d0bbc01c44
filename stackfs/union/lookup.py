"""Lookup through the branches, top down (aufs ``au_lkup_dentry``).

The first branch that has the name wins. A whiteout ``.wh.NAME`` ends the search; a non-directory
ends it (it hides everything below); directories found below a directory are merged until one is
opaque (``.wh..wh..opq``). A directory that carries a redirect (``.wh..wh..redir``) is looked for
at the redirected path in the branches below it (a renamed lower directory); that path comes
from metadata, so it is resolved beneath each branch's root without following a symlink
(:meth:`Branch.lstat_beneath`; overlayfs' ``ovl_lookup_layer`` stops at a non-directory too).

Everything here is synchronous syscalls on the branches: the union runs a whole lookup in one
worker thread when a branch it touches may block (a FUSE branch), or inline otherwise.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from dataclasses import dataclass

from stackfs.union import whiteout
from stackfs.union.branches import Branch, Path
from stackfs.union.inode import Node


@dataclass
class Found:
    """What a lookup found: the top object's stat, the layers, the redirect."""

    st: os.stat_result
    layers: tuple[int, ...]
    redirect: tuple[int, Path] | None
    #: the name is whited out in some branch above where it was found (or not found at all)
    opaque: bool = False


def lookup_child(branches: list[Branch], parent: Node, name: bytes, first: int = 0) -> Found | None:
    """Find ``name`` in directory ``parent``; None if the union has no such entry.

    ``first`` skips the branches above it (``first=1``: is the name still there below the upper
    branch? That decides whether removing it needs a whiteout).
    """
    layers: list[int] = []
    top_st: os.stat_result | None = None
    redirect: tuple[int, Path] | None = None
    player = parent.layers
    last = player[-1]
    nbr = len(branches)
    opaque = False
    for bi in range(max(player[0], first), nbr):
        if redirect is None:
            if bi not in player:
                continue
            ppath = parent.path(bi)
            path = ppath + (name,)
        else:
            path = redirect[1]
            ppath = path[:-1]
        br = branches[bi]
        if redirect is None:
            st = br.lstat(path)
        else:
            try:
                st = br.lstat_beneath(path)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.EXDEV):
                    raise
                break  # a symlink on the redirect's way: not a directory, nothing merged below
        if st is None:
            if redirect is None and bi >= last:
                break  # nothing below to hide: the whiteout would not change the answer
            if path and whiteout.has_whiteout(br, ppath, path[-1]):
                break
            continue
        if whiteout.is_ovl_whiteout(st):
            break  # an overlayfs whiteout: the name is deleted from here down
        isdir = stat_mod.S_ISDIR(st.st_mode)
        if top_st is None:
            top_st = st
            layers.append(bi)
            if not isdir:
                break
        elif not isdir:
            break
        else:
            layers.append(bi)
        if bi == nbr - 1:
            break
        is_opq, r = whiteout.dir_meta(br, path)
        if is_opq:
            opaque = True
            break
        if redirect is None and r is not None:
            redirect = (bi, r)
    if top_st is None:
        return None
    return Found(top_st, tuple(layers), redirect, opaque)
