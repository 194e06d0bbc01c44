"""Kernel models shared by every testbed daemon (pure Python, no FUSE here).

One :class:`KernelState` per daemon owns everything below; ``state.snapshot()`` is the state of
docs/ARCHITECTURE.md (``inflight``, ``locks``, ``lock_order``, ``events``, ``inject``).

Tasks and call chains (:mod:`.task`)
    ``Task(pid, comm)``, ``Task.from_pid(tid)`` (reads /proc/TID/comm, tolerates exited tasks).
    ``current_task`` is a context variable (per trio task): the daemon sets it per request with
    ``set_current_task(Task.from_pid(ctx.pid))`` or ``with running_as(task):``;
    ``get_current_task()`` falls back to the daemon itself. ``with calls("nfs_atomic_open"):``
    pushes kernel function names onto the task's model call chain; ``current_chain()`` reads it.

Locks (:mod:`.locks`, :mod:`.lockdep`)
    ``sem = state.locks.i_rwsem(ino, desc="/f (ino 5)")`` (or ``state.locks.get(name, key)``)
    is a non-recursive, FIFO reader/writer semaphore owned by tasks (pids)::

        await sem.down_write()  /  sem.up_write()       # for the current task, or pass task=
        await sem.down_read()   /  sem.up_read()
        await inode_lock(sem); inode_unlock(sem); await inode_lock_shared(sem); ...
        async with sem.write_locked(): ...

    Taking a lock one already holds waits (forever) and records ``recursive_locking``; lockdep
    records every "B taken while holding A" once (``lock_order``) and reports a cycle at once as
    ``lock_inversion`` (deadlock or not). Releasing a lock not held raises ``UnlockError``.

Dentry cache (:mod:`.dcache`)
    ``dc = state.dcache(sb)``: ``d_lookup``, ``d_alloc``, ``await d_alloc_parallel``,
    ``d_lookup_done``, ``d_add``, ``d_splice_alias``, ``d_instantiate``, ``d_drop``,
    ``d_invalidate``, ``dget``/``dput``/``with dc.ref(d):``. Inodes are inode numbers. A failed
    kernel assertion records an ``oops`` event and raises ``Oops`` (answer EIO, or stop serving
    if ``state.panic_on_oops``; ``state.on_oops`` hooks run first).

Injection points (:mod:`.inject`)
    ``state.inject.declare(name, description)``; ``await state.inject.hit(name)`` where the real
    code would make a round trip; ``state.inject.configure("POINT=ACTION")`` with ACTION
    ``off | delay:S | barrier:N[:T] | error:ERRNAME`` (ValueError with a one-line message).

Requests in flight (:mod:`.inflight`)
    ``rid = state.inflight.begin(op, ino, name, task_or_pid, fh=None)``, ``end(rid)``,
    ``set_worker(rid, tid)`` from the worker thread.

Events (:mod:`.events`)
    ``state.events.record(type, summary, tasks, detail)``; ``state.events.of_type("oops")``.
"""

from stackfs.kernel.dcache import DCache, Dentry
from stackfs.kernel.events import (
    BARRIER_TIMEOUT,
    LOCK_INVERSION,
    OOPS,
    RECURSIVE_LOCKING,
    EventLog,
    Oops,
)
from stackfs.kernel.inflight import InflightTable
from stackfs.kernel.inject import Action, InjectionPoints, parse_action, parse_spec
from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.locks import (
    READ,
    WRITE,
    LockTable,
    RWSem,
    UnlockError,
    inode_lock,
    inode_lock_shared,
    inode_unlock,
    inode_unlock_shared,
)
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import (
    Task,
    calls,
    current_chain,
    current_task,
    get_current_task,
    running_as,
    set_current_task,
)

__all__ = [
    "BARRIER_TIMEOUT",
    "LOCK_INVERSION",
    "OOPS",
    "READ",
    "RECURSIVE_LOCKING",
    "WRITE",
    "Action",
    "DCache",
    "Dentry",
    "EventLog",
    "InflightTable",
    "InjectionPoints",
    "KernelState",
    "LockDep",
    "LockTable",
    "Oops",
    "RWSem",
    "Task",
    "UnlockError",
    "calls",
    "current_chain",
    "current_task",
    "get_current_task",
    "inode_lock",
    "inode_lock_shared",
    "inode_unlock",
    "inode_unlock_shared",
    "parse_action",
    "parse_spec",
    "running_as",
    "set_current_task",
]
