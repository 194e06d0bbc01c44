"""Branch paths stay put while a copy-up uses them (aufs ``au_pin``; the kernel's
``s_vfs_rename_mutex`` plays this part between renames).

A copy-up computes the upper path of its parent directory, then runs in a worker thread. The
kernel does not lock a renamed directory itself (``vfs_rename`` locks the parents and the
target), so a rename of a directory above it can run in between: the copy then lands at the
old path, or in a new directory made there meanwhile, and the lower object shows at two names
(two dentries of one directory inode: ``d_splice_alias`` answers ESTALE). Copy-ups hold the
gate shared from computing their paths until they are done; a rename holds it exclusive from
its first lookup to its last node update, its own copy-ups included. A waiting rename keeps
new copy-ups out, so renames are not starved. Both are reentrant for the task that holds them
(a copy-up copies its parents up first; a rename copies its source up): the gate is taken
before any per-inode copy-up lock, never after one.

All of it runs in the trio thread (the union's request handlers): no thread lock is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class RenameGate:
    """Shared for copy-ups, exclusive for renames; see the module docstring."""

    def __init__(self) -> None:
        #: tasks holding the gate shared, and how many times each
        self.readers: dict[trio.lowlevel.Task, int] = {}
        self.writer: trio.lowlevel.Task | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_writer(self) -> None:
        while self.writer is not None:
            await self._changed.wait()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        me = trio.lowlevel.current_task()
        if me is self.writer:
            yield  # a rename's own copy-up
            return
        if me not in self.readers:
            await self._wait_writer()
        self.readers[me] = self.readers.get(me, 0) + 1
        try:
            yield
        finally:
            n = self.readers.pop(me) - 1
            if n:
                self.readers[me] = n
            else:
                self._wake()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        me = trio.lowlevel.current_task()
        if me is self.writer:
            yield
            return
        await self._wait_writer()
        self.writer = me  # from here on new copy-ups wait
        try:
            while self.readers:
                await self._changed.wait()
            yield
        finally:
            self.writer = None
            self._wake()
