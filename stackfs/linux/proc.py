"""Reading ``/proc``: the few questions every part of the testbed asks about a process.

psutil answers whether a process exists and what state it is in; the raw files are read where
psutil has no call (``/proc/PID/mem``, ``/proc/TID/syscall``, ``wchan``) or where its answer is
not the kernel's word (psutil's ``name()`` is not ``comm`` when comm is truncated).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable

import psutil

_PAGE = os.sysconf("SC_PAGE_SIZE")


def read(path: str, limit: int = 65536) -> bytes | None:
    """Up to ``limit`` bytes of a /proc file (one read), or None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie or a dead task is not alive)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def stat_start_ticks(data: bytes | None) -> int | None:
    """``starttime`` (field 22) of a ``/proc/PID/stat`` line: clock ticks from boot to the
    task's start (``do_task_stat``). Unlike a wall-clock start time it never moves with the
    clock, so two reads of one process give the same number and a reused pid a larger one."""
    rest = data[data.rfind(b")") + 2 :].split() if data else []
    return int(rest[19]) if len(rest) > 19 else None


def start_ticks(pid: int) -> int | None:
    """Process ``pid``'s ``starttime`` (:func:`stat_start_ticks`), or None if it is gone."""
    return stat_start_ticks(read(f"/proc/{pid}/stat", 1024))


def fuse_connections(pid: int) -> list[int | None]:
    """The FUSE connections process ``pid`` serves: one entry per ``/dev/fuse`` fd it holds,
    the ``fuse_connection:`` of its fdinfo (``fuse_dev_show_fdinfo``, 6.18 shows it), None
    where the kernel does not say (Debian 12's 6.1). Empty when it holds no ``/dev/fuse``."""
    out: list[int | None] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        if readlink(f"/proc/{pid}/fd/{fd}") != "/dev/fuse":
            continue
        info = read(f"/proc/{pid}/fdinfo/{fd}", 4096) or b""
        m = re.search(rb"^fuse_connection:\s*(\d+)", info, re.M)
        out.append(int(m.group(1)) if m else None)
    return out


def comm_of(pid: int) -> str | None:
    """The task's ``comm`` as the kernel keeps it (15 characters at most)."""
    data = read(f"/proc/{pid}/comm", 64)
    return data.decode(errors="replace").strip() if data else None


def uid_of(pid: int) -> int | None:
    """The real uid of ``pid`` (``/proc/PID/status``, ``Uid:``), None once it is gone."""
    for line in (read(f"/proc/{pid}/status", 4096) or b"").splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    return None


def read_cstring(pid: int, addr: int, limit: int = 4096) -> bytes | None:
    """The NUL-terminated string at ``addr`` in process ``pid``'s memory (``/proc/PID/mem``),
    read page by page so that a string near the end of a mapping is still found.

    None when it cannot be read (no such address, the process is gone, no permission) or has no
    NUL within ``limit`` bytes. Reading another process's memory takes its mmap lock: a caller
    that may look at a task blocked in a page fault must not call this for it.
    """
    if addr == 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    out = b""
    try:
        while len(out) < limit:
            want = min(_PAGE - (addr + len(out)) % _PAGE, limit - len(out))
            chunk = os.pread(fd, want, addr + len(out))
            if not chunk:
                return None
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)
    return None


def read_mem(pid: int, addr: int, size: int) -> bytes | None:
    """``size`` bytes at ``addr`` in process ``pid``'s memory, or None."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, addr)
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def thread_states(pid: int) -> dict[int, str]:
    """The scheduler state letter (``R``, ``S``, ``D``, ``Z``, ...) of every thread of process
    ``pid`` (``/proc/PID/task/TID/stat`` field 3); empty when the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    out = {}
    for t in tids:
        data = read(f"/proc/{pid}/task/{t}/stat", 512)
        if data and b")" in data:
            rest = data[data.rfind(b")") + 2 :]
            out[int(t)] = rest[:1].decode()
    return out


def descendants(pid: int) -> set[int]:
    """The processes below ``pid``, children of children included, from each thread's
    ``/proc/PID/task/TID/children`` (``CONFIG_PROC_CHILDREN``: ``get_children_pid`` in
    fs/proc/array.c; a snapshot, which may miss a child forked or reaped meanwhile). Reads
    only the tree, not every process on the machine as a walk of ``/proc`` by parent does
    (10 ms a walk here, 35 ms under two busy loops: too slow for the scheduler's quiescence
    samples)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            for c in (read(f"/proc/{p}/task/{t}/children", 65536) or b"").split():
                if c.isdigit() and int(c) not in out:
                    out.add(int(c))
                    todo.append(int(c))
    return out


def tgid_of(tid: int) -> int | None:
    """The process (thread group) of thread ``tid`` (``Tgid:`` of ``/proc/TID/status``)."""
    for line in (read(f"/proc/{tid}/status", 1024) or b"").splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1])
    return None


def syscall_text(tid: int) -> str:
    """``/proc/TID/syscall`` as read ("" when unreadable)."""
    return (read(f"/proc/{tid}/syscall", 512) or b"").decode("ascii", "replace").strip()


def settled_syscall_text(tid: int, bound: float = 0.25) -> str:
    """``/proc/TID/syscall`` of a task that has just sent this process a FUSE request and is
    going to sleep for its answer.

    The kernel's ``task_current_syscall`` answers ``running`` for a task that is not asleep,
    and the requester queues the request (``queue_request_and_unlock``) before it sleeps in
    ``request_wait_answer``: on a slow machine (software emulation, the daemon on the other
    CPU) the daemon can read the request first. Read again until the task is asleep, for at
    most ``bound`` seconds; then the last text read (still ``running``: the caller's "unknown").
    Only for synchronous requests (LOOKUP, OPEN, a direct-I/O READ or WRITE), whose sender is
    certain to go to sleep."""
    deadline = time.monotonic() + bound
    while True:
        text = syscall_text(tid)
        if not text.startswith("running") or time.monotonic() >= deadline:
            return text
        time.sleep(0.0005)


def parse_syscall(text: str) -> tuple[int, list[int]] | None:
    """(number, the six arguments) from a ``/proc/TID/syscall`` line; None when the task is
    running (``running``) or in no syscall (``-1 ...``)."""
    fields = text.split()
    if not fields or not fields[0].isdigit():
        return None
    try:
        return int(fields[0]), [int(a, 16) for a in fields[1:7]]
    except ValueError:
        return None


def syscall_of(tid: int) -> tuple[int, list[int]] | None:
    """The system call task ``tid`` is blocked in: (number, arguments), or None."""
    return parse_syscall(syscall_text(tid))


def kernel_stack(tid: int) -> list[str]:
    """The function names of task ``tid``'s kernel stack (``/proc/TID/stack``, root only),
    innermost first; empty when unreadable."""
    raw = (read(f"/proc/{tid}/stack") or b"").decode(errors="replace")
    out = []
    for line in raw.splitlines():
        fn = line.split("] ", 1)[-1].strip()
        if fn:
            out.append(fn.split("+", 1)[0])
    return out


def terminate(
    pid: int, is_alive: Callable[[], bool], grace: float = 1.0, kill_wait: float = 3.0
) -> int | None:
    """Stop process ``pid``: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds.

    ``is_alive`` says whether it is still there (a child's ``Popen.poll() is None``, so that it is
    reaped; else :func:`alive`). Returns the last signal sent, or None if it was already gone."""
    sent = None
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        if not is_alive():
            break
        sent = sig
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        end = time.monotonic() + wait
        while is_alive() and time.monotonic() < end:
            time.sleep(0.02)
    return sent
