"""Tasks and model call chains.

A :class:`Task` is a kernel task as a FUSE daemon sees it: the calling thread's tid
(``ctx.pid`` of a request) and its ``/proc/TID/comm``. The *current task* is a context variable
that the daemon sets at the start of every request handler, so every model function below knows
on whose behalf it runs (``current`` in the kernel).

A *call chain* is the list of kernel functions the model is "inside", innermost last, e.g.
``("do_sys_open", "path_openat", "lookup_open", "nfs_atomic_open")``. It is what a stack trace of
the task would show in the real kernel, and it is what locks, lockdep and oops reports record::

    with calls("do_sys_open", "path_openat"):
        with calls("nfs_atomic_open"):
            current_chain()   # ("do_sys_open", "path_openat", "nfs_atomic_open")

Both are context variables, so each trio task (each FUSE request) has its own; a nursery child
starts with a copy of its parent's. :func:`task_of` and :func:`chain_of` read them from another
trio task's context, which is how an oops names every task racing on a dentry.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: comm of a task whose /proc entry is gone (it exited before we looked).
VANISHED_COMM = "?"


@dataclass(frozen=True, slots=True)
class Task:
    """A kernel task: thread id and command name (``task_struct->pid``, ``->comm``)."""

    pid: int
    comm: str

    @classmethod
    def from_pid(cls, tid: int) -> Task:
        """The task with thread id ``tid``, comm read from ``/proc/TID/comm`` (~2 µs).

        A task that has already exited gets :data:`VANISHED_COMM`.
        """
        try:
            fd = os.open(f"/proc/{tid}/comm", os.O_RDONLY)
        except OSError:
            return cls(tid, VANISHED_COMM)
        try:
            data = os.read(fd, 64)
        except OSError:
            return cls(tid, VANISHED_COMM)
        finally:
            os.close(fd)
        return cls(tid, data.rstrip(b"\n").decode("utf-8", "replace"))

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm}

    def __str__(self) -> str:
        return f"{self.comm}/{self.pid}"


#: The task the current trio task works for; ``None``: the daemon itself
#: (see :func:`get_current_task`).
current_task: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
    "stackfs_current_task", default=None
)

_chain: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "stackfs_call_chain", default=()
)

_daemon_task: Task | None = None


def daemon_task() -> Task:
    """The daemon process itself (its main thread), the owner of work done for no caller."""
    global _daemon_task
    if _daemon_task is None or _daemon_task.pid != os.getpid():
        _daemon_task = Task.from_pid(os.getpid())
    return _daemon_task


def get_current_task() -> Task:
    """The current task, or :func:`daemon_task` when no request has set one."""
    task = current_task.get()
    return task if task is not None else daemon_task()


def set_current_task(task: Task | None) -> contextvars.Token[Task | None]:
    """Set the current task for this trio task; returns the token for ``current_task.reset``."""
    return current_task.set(task)


@contextmanager
def running_as(task: Task | None) -> Iterator[Task | None]:
    """``with running_as(task):`` the code inside runs on behalf of ``task``."""
    token = current_task.set(task)
    try:
        yield task
    finally:
        current_task.reset(token)


class calls:  # noqa: N801 - used like a function: ``with calls("nfs_lookup"):``
    """Push kernel function names onto the current task's model call chain.

    ``with calls("lookup_open", "nfs_atomic_open"):`` appends both names for the duration of
    the block. An instance is used for one ``with`` at a time. Cost: a context-variable set and
    reset (well under a microsecond).
    """

    __slots__ = ("names", "_token")

    def __init__(self, *names: str) -> None:
        self.names = names

    def __enter__(self) -> tuple[str, ...]:
        chain = _chain.get() + self.names
        self._token = _chain.set(chain)
        return chain

    def __exit__(self, *exc: object) -> None:
        _chain.reset(self._token)


def current_chain() -> tuple[str, ...]:
    """The current task's model call chain, outermost first."""
    return _chain.get()


def task_of(context: contextvars.Context | None) -> Task:
    """The current task recorded in another (trio task's) context; ``None``: this context."""
    task = current_task.get() if context is None else context.get(current_task)
    return task if task is not None else daemon_task()


def chain_of(context: contextvars.Context | None) -> tuple[str, ...]:
    """The model call chain recorded in another (trio task's) context; ``None``: this context."""
    return _chain.get() if context is None else context.get(_chain, ())


def task_json(task: Task, chain: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``{"pid", "comm", "chain"}``: how events name a task."""
    return {"pid": task.pid, "comm": task.comm, "chain": list(chain)}
