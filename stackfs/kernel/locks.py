"""``i_rwsem`` and friends: a reader/writer semaphore with the kernel rwsem's semantics.

:class:`RWSem` mirrors ``struct rw_semaphore`` (kernel/locking/rwsem.c) as it protects
``inode->i_rwsem`` (the ``i_mutex`` of seed 000):

* owners are tasks (:class:`~stackfs.kernel.task.Task`, compared by pid), not trio tasks: a
  lock taken in one FUSE request (``setxattr trusted.stackfs.i_rwsem``) is released in another
  (``removexattr``) of the same calling thread;
* not recursive: a task asking again for a lock it holds waits like anyone else, which for a
  write lock (or a read lock behind a waiting writer) is forever, exactly the self-deadlock of
  seed 000 (aufs copy-up holds the lower i_mutex, OpenAFS ``afs_linux_open`` ->
  ``osi_VM_FlushPages`` takes it again). The attempt is recorded as a ``recursive_locking``
  event with the holder's and the new attempt's call chains. (A second read lock while no
  writer waits is granted, as the kernel does; lockdep still reports it.)
* FIFO: a waiting writer blocks new readers; on release the head of the queue is granted (a
  writer alone, or the run of readers at the head).
* waiting is cancellable (daemon shutdown) and leaves no stale waiter.

Every lock knows its holders and waiters, each with mode, task, call chain and since when; that is
the ``locks`` part of the state snapshot. The uncontended paths do not yield to trio.

:class:`LockTable` creates locks on demand, keyed by ``(name, key)``::

    sem = state.locks.i_rwsem(5, desc="/f (ino 5)")      # ("i_rwsem", "ino:5")
    await inode_lock(sem)          # down_write for the current task
    ...
    inode_unlock(sem)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from stackfs.kernel.events import RECURSIVE_LOCKING, EventLog
from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.task import Task, current_chain, get_current_task, task_json

READ = "read"
WRITE = "write"


class UnlockError(RuntimeError):
    """Releasing a lock the task does not hold (lockdep's "bad unlock balance detected")."""


@dataclass(slots=True)
class LockHolder:
    """A holder of, or a waiter for, a lock."""

    task: Task
    mode: str
    since: float
    chain: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.to_json(),
            "mode": self.mode,
            "since": self.since,
            "chain": list(self.chain),
        }


@dataclass(slots=True)
class _Waiter(LockHolder):
    event: trio.Event = field(default_factory=trio.Event)
    granted: bool = False


class RWSem:
    """A modelled ``struct rw_semaphore``; see the module docstring."""

    __slots__ = ("name", "key", "desc", "ident", "holders", "waiters", "_lockdep", "_events")

    def __init__(
        self,
        name: str,
        key: str,
        desc: str = "",
        *,
        lockdep: LockDep | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.desc = desc
        #: how lockdep and events name this lock: ``"i_rwsem ino:5"``
        self.ident = f"{name} {key}"
        self.holders: list[LockHolder] = []
        self.waiters: deque[_Waiter] = deque()
        self._lockdep = lockdep
        self._events = events

    def __repr__(self) -> str:
        return f"<RWSem {self.ident} holders={len(self.holders)} waiters={len(self.waiters)}>"

    # -- acquire ---------------------------------------------------------------------------------

    async def down_write(
        self, task: Task | None = None, chain: tuple[str, ...] | None = None
    ) -> None:
        """Take the lock exclusively for ``task`` (default: the current task)."""
        await self._down(WRITE, task, chain)

    async def down_read(
        self, task: Task | None = None, chain: tuple[str, ...] | None = None
    ) -> None:
        """Take the lock shared for ``task`` (default: the current task)."""
        await self._down(READ, task, chain)

    def down_write_trylock(
        self, task: Task | None = None, chain: tuple[str, ...] | None = None
    ) -> bool:
        """Take the lock exclusively if that needs no waiting; True if taken."""
        return self._trylock(WRITE, task, chain)

    def down_read_trylock(
        self, task: Task | None = None, chain: tuple[str, ...] | None = None
    ) -> bool:
        """Take the lock shared if that needs no waiting; True if taken."""
        return self._trylock(READ, task, chain)

    def _can_grant(self, mode: str) -> bool:
        if self.waiters:
            return False
        if mode == WRITE:
            return not self.holders
        return not self.holders or self.holders[0].mode != WRITE

    def _trylock(self, mode: str, task: Task | None, chain: tuple[str, ...] | None) -> bool:
        task = task if task is not None else get_current_task()
        if not self._can_grant(mode):
            return False
        chain = current_chain() if chain is None else tuple(chain)
        if self._lockdep is not None:
            self._lockdep.lock_acquire(task, self.ident, mode, chain, trylock=True)
        self.holders.append(LockHolder(task, mode, time.time(), chain))
        return True

    async def _down(self, mode: str, task: Task | None, chain: tuple[str, ...] | None) -> None:
        task = task if task is not None else get_current_task()
        chain = current_chain() if chain is None else tuple(chain)
        now = time.time()
        if self.holders:
            self._check_recursion(task, mode, chain)
        if self._lockdep is not None:
            self._lockdep.lock_acquire(task, self.ident, mode, chain)
        if self._can_grant(mode):
            self.holders.append(LockHolder(task, mode, now, chain))
            return
        waiter = _Waiter(task, mode, now, chain)
        self.waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._remove_holder(waiter)
            else:
                self.waiters.remove(waiter)
            if self._lockdep is not None:
                self._lockdep.lock_release(task, self.ident)
            self._wake()
            raise

    def _check_recursion(self, task: Task, mode: str, chain: tuple[str, ...]) -> None:
        for holder in self.holders:
            if holder.task.pid == task.pid:
                break
        else:
            return
        if self._events is None:
            return
        what = self.desc or self.ident
        blocks = mode == WRITE or holder.mode == WRITE or bool(self.waiters)
        self._events.record(
            RECURSIVE_LOCKING,
            f"possible recursive locking: {task} takes {self.ident} ({what}) {mode} "
            f"while holding it {holder.mode}" + (" - it will wait forever" if blocks else ""),
            [task_json(task, chain), task_json(holder.task, holder.chain)],
            {
                "lock": self.ident,
                "desc": self.desc,
                "held_mode": holder.mode,
                "held_since": holder.since,
                "held_chain": list(holder.chain),
                "mode": mode,
                "chain": list(chain),
                "blocks": blocks,
            },
        )

    # -- release ---------------------------------------------------------------------------------

    def up_write(self, task: Task | None = None) -> None:
        """Release the exclusive hold of ``task`` (default: the current task)."""
        self._up(WRITE, task)

    def up_read(self, task: Task | None = None) -> None:
        """Release one shared hold of ``task`` (default: the current task)."""
        self._up(READ, task)

    def _up(self, mode: str, task: Task | None) -> None:
        task = task if task is not None else get_current_task()
        for i in range(len(self.holders) - 1, -1, -1):
            holder = self.holders[i]
            if holder.task.pid == task.pid and holder.mode == mode:
                del self.holders[i]
                break
        else:
            raise UnlockError(f"{task} releases {self.ident} ({mode}) which it does not hold")
        if self._lockdep is not None:
            self._lockdep.lock_release(holder.task, self.ident)
        self._wake()

    def _remove_holder(self, holder: LockHolder) -> None:
        for i, h in enumerate(self.holders):
            if h is holder:
                del self.holders[i]
                return

    def _wake(self) -> None:
        """Grant the head of the queue: one writer, or the run of readers at the head."""
        while self.waiters:
            head = self.waiters[0]
            if head.mode == WRITE:
                if self.holders:
                    return
            elif self.holders and self.holders[0].mode == WRITE:
                return
            self.waiters.popleft()
            head.granted = True
            head.since = time.time()
            self.holders.append(head)  # the waiter object itself, so cancellation finds it
            head.event.set()
            if head.mode == WRITE:
                return

    # -- context managers and queries ------------------------------------------------------------

    def write_locked(self, task: Task | None = None) -> _Locked:
        """``async with sem.write_locked():`` down_write ... up_write."""
        return _Locked(self, WRITE, task)

    def read_locked(self, task: Task | None = None) -> _Locked:
        """``async with sem.read_locked():`` down_read ... up_read."""
        return _Locked(self, READ, task)

    def is_locked(self) -> bool:
        return bool(self.holders)

    def held_by(self, task: Task) -> str | None:
        """The mode ``task`` holds this lock in, or None."""
        for h in self.holders:
            if h.task.pid == task.pid:
                return h.mode
        return None

    def to_json(self) -> dict[str, Any]:
        """The entry of the ``locks`` list of the state snapshot."""
        return {
            "name": self.name,
            "key": self.key,
            "desc": self.desc,
            "holders": [h.to_json() for h in self.holders],
            "waiters": [w.to_json() for w in self.waiters],
        }


class _Locked:
    __slots__ = ("sem", "mode", "task")

    def __init__(self, sem: RWSem, mode: str, task: Task | None) -> None:
        self.sem, self.mode = sem, mode
        self.task = task if task is not None else get_current_task()

    async def __aenter__(self) -> RWSem:
        await self.sem._down(self.mode, self.task, None)
        return self.sem

    async def __aexit__(self, *exc: object) -> None:
        self.sem._up(self.mode, self.task)


# -- inode_lock() and friends (include/linux/fs.h) ------------------------------------------------


async def inode_lock(sem: RWSem, task: Task | None = None) -> None:
    """``inode_lock(inode)``: ``down_write(&inode->i_rwsem)``."""
    await sem._down(WRITE, task, None)


def inode_unlock(sem: RWSem, task: Task | None = None) -> None:
    """``inode_unlock(inode)``: ``up_write(&inode->i_rwsem)``."""
    sem._up(WRITE, task)


async def inode_lock_shared(sem: RWSem, task: Task | None = None) -> None:
    """``inode_lock_shared(inode)``: ``down_read(&inode->i_rwsem)``."""
    await sem._down(READ, task, None)


def inode_unlock_shared(sem: RWSem, task: Task | None = None) -> None:
    """``inode_unlock_shared(inode)``: ``up_read(&inode->i_rwsem)``."""
    sem._up(READ, task)


class LockTable:
    """All modelled locks of one daemon, created on demand by ``(name, key)``."""

    def __init__(self, lockdep: LockDep | None = None, events: EventLog | None = None) -> None:
        self.lockdep = lockdep
        self.events = events
        self._locks: dict[tuple[str, str], RWSem] = {}

    def get(self, name: str, key: str, desc: str | None = None) -> RWSem:
        """The lock ``(name, key)``, created if new; ``desc`` (a human name) updates it if given."""
        sem = self._locks.get((name, key))
        if sem is None:
            sem = self._locks[(name, key)] = RWSem(
                name, key, desc or "", lockdep=self.lockdep, events=self.events
            )
        elif desc is not None:
            sem.desc = desc
        return sem

    def i_rwsem(self, ino: int, desc: str | None = None) -> RWSem:
        """``inode->i_rwsem`` of inode ``ino``: the lock ``("i_rwsem", "ino:INO")``."""
        return self.get("i_rwsem", f"ino:{ino}", desc)

    def find(self, name: str, key: str) -> RWSem | None:
        return self._locks.get((name, key))

    def __iter__(self) -> Iterator[RWSem]:
        return iter(list(self._locks.values()))

    def __len__(self) -> int:
        return len(self._locks)

    def snapshot(self) -> list[dict[str, Any]]:
        """The ``locks`` list of the state snapshot: every lock that is held or waited for."""
        return [s.to_json() for s in self._locks.values() if s.holders or s.waiters]
