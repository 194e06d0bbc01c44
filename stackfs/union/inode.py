"""Union inodes: what the union knows about an object the kernel holds a node id for.

A :class:`Node` mirrors aufs' ``au_iinfo``/``au_dinfo``: the branches the object exists in
(``layers``, top first; for a non-directory only the top), its names and, for a renamed
directory, the path at which the branches below see it (``redirect``). Branch paths are computed
from the parent chain, so renaming a directory renames every cached descendant at once.

A hard-linked file has one node id and several names (the kernel's dentry aliases of one
inode, ``d_find_alias``): ``parent``/``name`` is the one the branches are reached by, ``aliases``
the others the kernel was given (lookup, readdirplus, link, rename). Removing one name through
the union promotes another (:meth:`Node.drop_name`), so a surviving link keeps working whatever
happened to the name the node was last looked up by.

The :class:`NodeTable` counts kernel lookups (``nlookup``; readdirplus entries count too) and
drops a node at FORGET once nothing refers to it.
"""

from __future__ import annotations

import stat as stat_mod
from dataclasses import dataclass

from stackfs.union.branches import Path
from stackfs.union.xino import ROOT

#: the fds of a node never opened (shared: a node gets its own set at its first fd)
NO_FDS: frozenset[int] = frozenset()


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
    #: open fds (for fstat after unlink); a shared empty frozenset until the first one
    #: (:meth:`add_fd`): a node is made per looked-up name, most are never opened
    fds: set[int] | frozenset[int] = NO_FDS
    unlinked: bool = False
    #: the other names of a hard-linked object, (parent, name), besides ``parent``/``name``
    #: (an empty tuple until there is one: every change assigns a new list)
    aliases: list[tuple[Node, bytes]] | tuple[()] = ()

    def add_fd(self, fd: int) -> None:
        if self.fds:
            self.fds.add(fd)  # type: ignore[union-attr]
        else:
            self.fds = {fd}

    def discard_fd(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.discard(fd)  # type: ignore[union-attr]

    def add_name(self, parent: Node | None, name: bytes) -> None:
        """The kernel got (or used) the dentry ``parent/name`` for this object: reach the
        branches through it from now on, keep the previous name as an alias (``d_splice_alias``)."""
        if self.parent is parent and self.name == name:
            return
        if self.parent is not None and not self.is_dir:
            aliases = [(p, n) for p, n in self.aliases if not (p is parent and n == name)]
            aliases.append((self.parent, self.name))
            self.aliases = aliases
        else:
            self.aliases = ()
        self.parent, self.name = parent, name

    def drop_name(self, parent: Node, name: bytes) -> bool:
        """``parent/name`` was removed (unlink, rename away, renamed over). Returns True when no
        known name is left (the node is reachable only through open files or the pseudo-link);
        ``parent``/``name`` then stay as they were, for describe()."""
        if self.parent is parent and self.name == name:
            if self.aliases:
                self.parent, self.name = self.aliases.pop()
                return False
            return True
        self.aliases = [(p, n) for p, n in self.aliases if not (p is parent and n == name)]
        return False

    def rename_name(self, old_p: Node, old_name: bytes, new_p: Node, new_name: bytes) -> None:
        """``old_p/old_name`` is now ``new_p/new_name`` (``d_move``); made the primary name."""
        self.drop_name(old_p, old_name)
        self.aliases = [(p, n) for p, n in self.aliases if not (p is old_p and n == old_name)]
        if self.parent is old_p and self.name == old_name:
            self.parent, self.name = new_p, new_name
        else:
            self.add_name(new_p, new_name)

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
        old.add_name(node.parent, node.name)
        old.mode = node.mode
        if node.resolved or old.layers[:1] != node.layers[:1]:
            old.layers, old.redirect, old.resolved = node.layers, node.redirect, node.resolved
        old.plink = node.plink
        old.unlinked = False
        return old

    def add_readdir(
        self, uino: int, parent: Node, name: bytes, mode: int, branch: int, plink: bool
    ) -> Node:
        """Count the lookup a readdirplus entry gives the kernel (``fuse_direntplus_link``): a
        new node whose layers below ``branch`` are not known yet (a directory is resolved at
        its first use), or the known one under one more name."""
        isdir = stat_mod.S_ISDIR(mode)
        old = self.nodes.get(uino)
        if old is None:
            node = Node(uino, parent, name, mode, (branch,), None, plink, resolved=not isdir)
            node.nlookup = 1
            self.nodes[uino] = node
            return node
        old.nlookup += 1
        old.add_name(parent, name)
        old.mode = mode
        if not isdir or old.layers[0] != branch:
            old.layers, old.redirect, old.resolved = (branch,), None, not isdir
        old.plink = plink
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
