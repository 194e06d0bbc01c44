"""Union inodes: what the union knows about an object the kernel holds a node id for.

A :class:`Node` mirrors aufs' ``au_iinfo``/``au_dinfo``: the branches the object exists in
(``layers``, top first; for a non-directory only the top), its name in its parent (the last one
the kernel looked it up by) and, for a renamed directory, the path at which the branches below see
it (``redirect``). Branch paths are computed from the parent chain, so renaming a directory
renames every cached descendant at once.

The :class:`NodeTable` counts kernel lookups (``nlookup``; readdirplus entries count too) and
drops a node at FORGET once nothing refers to it.
"""

from __future__ import annotations

import stat as stat_mod
from dataclasses import dataclass, field

from stackfs.union.branches import Path
from stackfs.union.xino import ROOT


@dataclass(eq=False, slots=True)
class Node:
    uino: int
    parent: Node | None
    name: bytes
    mode: int
    #: branch indices the object exists in, top first (directories: every merged layer)
    layers: tuple[int, ...]
    #: (branch index j, path): branches below j see this directory at ``path``
    redirect: tuple[int, Path] | None = None
    #: the data lives in the pseudo-link WORK/plink/UINO (a hard-linked lower file copied up)
    plink: bool = False
    #: directories: layers/redirect are known (readdirplus creates nodes that are not)
    resolved: bool = True
    nlookup: int = 0
    opened: int = 0
    #: open fds (for fstat after unlink)
    fds: set[int] = field(default_factory=set)
    unlinked: bool = False

    @property
    def top(self) -> int:
        return self.layers[0]

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.mode)

    def path(self, branch: int) -> Path:
        """The path of this object in branch ``branch``."""
        parts: list[bytes] = []
        n: Node | None = self
        while n is not None and n.parent is not None:
            r = n.redirect
            if r is not None and branch > r[0]:
                return r[1] + tuple(reversed(parts))
            parts.append(n.name)
            n = n.parent
        return tuple(reversed(parts))

    def union_path(self) -> Path:
        return self.path(0)

    def describe(self) -> str:
        return "/" + b"/".join(self.union_path()).decode(errors="replace")


class NodeTable:
    """Node ids the kernel knows, with their lookup counts."""

    def __init__(self, root: Node) -> None:
        self.nodes: dict[int, Node] = {ROOT: root}
        self.root = root
        root.nlookup = 1

    def get(self, uino: int) -> Node | None:
        return self.nodes.get(uino)

    def __getitem__(self, uino: int) -> Node:
        return self.nodes[uino]

    def __len__(self) -> int:
        return len(self.nodes)

    def add(self, node: Node) -> Node:
        """Register ``node`` (or refresh the one with its number) and count one lookup."""
        old = self.nodes.get(node.uino)
        if old is None:
            self.nodes[node.uino] = node
            node.nlookup = 1
            return node
        old.nlookup += 1
        old.parent, old.name, old.mode = node.parent, node.name, node.mode
        if node.resolved or old.layers[:1] != node.layers[:1]:
            old.layers, old.redirect, old.resolved = node.layers, node.redirect, node.resolved
        old.plink = node.plink
        old.unlinked = False
        return old

    def forget(self, uino: int, n: int) -> None:
        node = self.nodes.get(uino)
        if node is None or uino == ROOT:
            return
        node.nlookup -= n
        if node.nlookup <= 0 and node.opened <= 0:
            del self.nodes[uino]

    def closed(self, node: Node) -> None:
        if node.nlookup <= 0 and node.opened <= 0 and node.uino != ROOT:
            self.nodes.pop(node.uino, None)

    def under(self, node: Node) -> list[Node]:
        """Cached nodes strictly below directory ``node``."""
        out = []
        for n in self.nodes.values():
            p = n.parent
            while p is not None:
                if p is node:
                    out.append(n)
                    break
                p = p.parent
        return out
