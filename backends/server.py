"""Another client changes the server: the ``server`` control operation of every backend.

``stackfs server MOUNTPOINT ACTION ARGS...`` sends ``{"op": "server", "action", "args"}``; the
backend does the change on the store with plain syscalls (as another client of the fileserver or
export would), keeps its inode table's names right, and then tells its personality
(``on_server_change``), which decides what the client and the kernel learn of it: a coherent
server invalidates the kernel's caches (passthrough), AFS breaks callbacks, NFS learns nothing
until its caches time out or a file handle turns out stale.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from backends.tables import Inode, ServerChange

ROOT = pyfuse3.ROOT_INODE


class ServerSide:
    """Mixin of :class:`~backends.base.StoreFS`: the other client, and kernel invalidation."""

    if TYPE_CHECKING:  # what the mixin uses of StoreFS
        store: Path
        by_key: dict[tuple[int, int], int]
        inodes: dict[int, Inode]

        def count(self, what: str, n: int = 1) -> None: ...

        def _set_link(self, inode: Inode, parent: int | None, name: bytes) -> None: ...

        def _unlinked(
            self, inode: Inode | None, parent: Inode, name: bytes, by_server: bool = False
        ) -> None: ...

        def renamed(
            self,
            moved: Inode | None,
            target: Inode | None,
            old_parent: Inode,
            name_old: bytes,
            new_parent: Inode,
            name_new: bytes,
            flags: int,
            by_server: bool = False,
        ) -> None: ...

    def _store_rel(self, text: str) -> bytes:
        """A store-relative path from the ``server`` op's argument; never outside the store."""
        rel = os.path.normpath("/" + text).lstrip("/")
        if not rel or rel == ".":
            raise ValueError(f"{text!r}: not a path inside the store")
        return os.fsencode(rel)

    def _known_at(self, rel: bytes) -> Inode | None:
        try:
            st = os.lstat(os.path.join(os.fsencode(self.store), rel))
        except OSError:
            return None
        ino = self.by_key.get((st.st_dev, st.st_ino))
        return self.inodes.get(ino) if ino is not None else None

    def _known_dir(self, rel: bytes) -> tuple[Inode | None, bytes]:
        head, tail = os.path.split(rel)
        parent = self.inodes[ROOT] if not head else self._known_at(head)
        return parent, tail

    def server_apply(self, action: str, args: list[str]) -> ServerChange:
        """Do ``action`` on the store as another client would (a plain syscall on the store).

        ``write PATH DATA [OFFSET]`` (without OFFSET the file's contents become DATA; the file
        is created if missing), ``truncate PATH SIZE``, ``rename OLD NEW`` (replaces NEW),
        ``unlink PATH``, ``mkdir PATH``, ``rmdir PATH``.
        """
        store = os.fsencode(self.store)
        need = {
            "write": (2, 3),
            "truncate": (2, 2),
            "rename": (2, 2),
            "unlink": (1, 1),
            "mkdir": (1, 1),
            "rmdir": (1, 1),
        }
        if action not in need:
            raise ValueError(f"unknown server action {action!r} (known: {', '.join(need)})")
        lo, hi = need[action]
        if not lo <= len(args) <= hi:
            raise ValueError(
                f"server {action} takes {lo}{'-' + str(hi) if hi != lo else ''} "
                f"arguments, got {len(args)}"
            )
        rel = self._store_rel(args[0])
        full = os.path.join(store, rel)
        parent, name = self._known_dir(rel)
        change = ServerChange(action, rel, inode=self._known_at(rel), parent=parent, name=name)
        if action == "write":
            data = os.fsencode(args[1])
            change.created = not os.path.lexists(full)
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if len(args) == 3 else os.O_TRUNC)
            fd = os.open(full, flags, 0o644)
            try:
                off = int(args[2]) if len(args) == 3 else 0
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        elif action == "truncate":
            os.truncate(full, int(args[1]))
        elif action == "rename":
            new_rel = self._store_rel(args[1])
            change.new_path = new_rel
            change.replaced = self._known_at(new_rel)
            change.new_parent, change.new_name = self._known_dir(new_rel)
            os.rename(full, os.path.join(store, new_rel))
            if change.parent is not None and change.new_parent is not None:
                self.renamed(
                    change.inode,
                    change.replaced,
                    change.parent,
                    name,
                    change.new_parent,
                    change.new_name,
                    0,
                    by_server=True,
                )
            elif change.inode is not None:
                self._set_link(change.inode, None, change.new_name)
        elif action == "unlink":
            os.unlink(full)
        elif action == "mkdir":
            os.mkdir(full, 0o755)
            change.created = True
        elif action == "rmdir":
            os.rmdir(full)
        if action in ("unlink", "rmdir") and change.parent is not None:
            self._unlinked(change.inode, change.parent, name, by_server=True)
        return change

    async def on_server_change(self, change: ServerChange) -> None:
        """Hook: the server changed. Here: a coherent server notifies the client, which tells
        the kernel to drop what it cached (names in the directory, the file's pages)."""
        await self.invalidate_kernel(change)

    async def invalidate_kernel(self, change: ServerChange) -> None:
        """Drop the kernel's cached names and pages that ``change`` made wrong."""
        if change.action in ("write", "truncate") and change.inode is not None:
            await self.invalidate_pages(change.inode)
        for parent, name, gone in (
            (change.parent, change.name, change.inode),
            (change.new_parent, change.new_name, change.replaced),
        ):
            if parent is None or not name:
                continue
            if change.action in ("write", "truncate") and not change.created:
                continue
            await self.invalidate_name(parent, name, gone)

    async def invalidate_name(self, parent: Inode, name: bytes, gone: Inode | None) -> None:
        """``pyfuse3.invalidate_entry``: the kernel forgets ``name`` in ``parent`` (in a worker
        thread: it waits for operations in flight on the directory)."""
        deleted = gone.ino if gone is not None else 0
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent.ino, name, deleted)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTCONN, errno.EBADF, errno.ENOTDIR):
                raise
        self.count("kernel_invalidations")

    async def invalidate_pages(self, inode: Inode, attr_only: bool = False) -> None:
        """``pyfuse3.invalidate_inode``: really drop the kernel's page cache (and attributes).

        Run in a worker thread: the kernel may need this daemon to answer a request before the
        invalidation completes (libfuse's warning), so the trio loop must keep serving.
        """
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode.ino, attr_only)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTCONN, errno.EBADF):
                raise
        self.count("kernel_invalidations")

    async def _server_op(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        args = [str(a) for a in request.get("args", [])]
        if not isinstance(action, str):
            raise ValueError("server needs an 'action'")
        try:
            change = self.server_apply(action, args)
        except OSError as exc:  # one line that names the operation and its path(s)
            paths = " ".join(args[:2] if action == "rename" else args[:1])
            raise OSError(exc.errno, f"server {action} {paths}: {exc.strerror}") from None
        await self.on_server_change(change)
        self.count("server_changes")
        return {"message": change.describe()}
