"""Reading /proc for every task: state, wchan, kernel stack, syscall, and the mount it waits on.

This is what the kernel's hung-task detector (kernel/hung_task.c) looks at, read from outside:
``/proc/PID/task/TID/stat`` (state), ``wchan``, ``stack`` (the kernel stack, as root), ``syscall``
(the syscall number and arguments of a blocked task), ``schedstat`` (how often it ran: the switch
count that ``check_hung_task`` compares) and ``sched`` (``se.exec_start``: when it last ran, so
how long it has been blocked).

A task *in a FUSE wait* has ``request_wait_answer`` on its stack (under ``fuse_lookup``,
``fuse_open``, ...), or other ``fuse_`` functions that are not the daemon's own ``fuse_dev_*``
read. Which connection it waits on is found, in this order:

1. a testbed daemon's in-flight request whose task is this tid (:func:`query_daemons` reads
   them over the control sockets; :mod:`stackfs.watchdog.graph` joins them);
2. an fd argument of the blocked syscall: ``/proc/PID/fdinfo/FD`` has the ``mnt_id`` of the
   file, which names the mount in mountinfo;
3. a path argument: ``/proc/PID/syscall`` gives the pointer, ``/proc/PID/mem`` the string,
   resolved against ``/proc/PID/cwd`` or the dirfd (``readlink`` only: nothing here ever walks a
   path on a FUSE mount), then the longest mount point that is a prefix of it;
4. the only watched connection whose ``waiting`` count is not zero.

The daemon of a foreign FUSE mount is the process holding ``/dev/fuse`` open with
``fuse_connection: N`` in its fdinfo (newer kernels show it: 6.18 does, Debian 12's 6.1 does not,
and there the daemon of a foreign mount stays unknown), found by :func:`fuse_daemons`.

Reading ``/proc/PID/mem`` takes the target's mmap lock; a task blocked in a page fault on a
FUSE file holds it, so the path of a task whose process has a task in a fault is not read.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stackfs.linux import proc, syscalls
from stackfs.runtime import mountinfo
from stackfs.runtime.mountinfo import MountEntry
from stackfs.watchdog.escape import path_text

#: wchan / stack functions of a task waiting for a FUSE reply.
FUSE_REPLY_WAIT = "request_wait_answer"
#: Frames that are the FUSE request machinery, not the operation (skipped to name the op).
FUSE_MACHINERY = {
    "request_wait_answer",
    "__fuse_simple_request",
    "fuse_simple_request",
    "__fuse_request_send",
    "fuse_request_send",
    "fuse_simple_background",
    "fuse_get_req",
    "__fuse_get_req",
}
#: The FUSE request a task waits for, by the frames of its stack (innermost match wins): what a
#: testbed daemon's in-flight record of READ, WRITE, FLUSH, FSYNC, READDIR lacks is the caller's
#: pid (pyfuse3 passes those handlers no context), so the watchdog pairs a task with such a
#: request by this opcode (fs/fuse/file.c, dir.c, readdir.c; ``fuse_perform_write`` under
#: ``fuse_file_write_iter`` seen on 6.18 for a write(2) on a union mount)
FUSE_OPCODE_FRAMES = {
    "fuse_perform_write": "write",
    "fuse_send_write_pages": "write",
    "fuse_send_write": "write",
    "fuse_direct_write_iter": "write",
    "fuse_cache_write_iter": "write",
    "fuse_file_write_iter": "write",
    "fuse_do_readfolio": "read",
    "fuse_read_folio": "read",
    "fuse_send_read": "read",
    "fuse_direct_read_iter": "read",
    "fuse_cache_read_iter": "read",
    "fuse_file_read_iter": "read",
    "fuse_flush": "flush",
    "fuse_fsync_common": "fsync",
    "fuse_fsync": "fsync",
    "fuse_dir_fsync": "fsyncdir",
    "fuse_readdir_uncached": "readdir",
    "fuse_readdir": "readdir",
}
#: Stack frames that mean "the task is inside a page fault or an mmap call" (mmap_lock held).
MM_FRAMES = (
    "handle_mm_fault",
    "do_user_addr_fault",
    "exc_page_fault",
    "vm_mmap_pgoff",
    "do_mmap",
    "__do_munmap",
    "do_vmi_munmap",
    "mmap_region",
    "__mm_populate",
)

AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel prints an int argument

_EXEC_START = re.compile(rb"se\.exec_start\s*:\s*([0-9.]+)")


@dataclass
class Syscall:
    """The syscall a blocked task is in (``/proc/TID/syscall``), with the files it names."""

    nr: int
    name: str
    args: list[int]
    paths: list[str] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    #: mount ids of the fd arguments (from fdinfo ``mnt_id``)
    mnt_ids: list[int] = field(default_factory=list)

    def render(self) -> str:
        shown = [f'"{path_text(p)}"' for p in self.paths] + [f"fd {fd}" for fd in self.fds]
        return f"{self.name}({', '.join(shown)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "nr": self.nr,
            "name": self.name,
            "args": [hex(a) for a in self.args],
            "paths": [path_text(p) for p in self.paths],
            "fds": self.fds,
        }


@dataclass
class TaskInfo:
    """One thread as /proc shows it."""

    tid: int
    pid: int
    comm: str
    state: str
    ppid: int = 0
    wchan: str = ""
    stack: list[str] = field(default_factory=list)
    switches: int | None = None
    #: wall-clock time the task last ran (``se.exec_start``), None if unknown
    last_ran: float | None = None
    #: wall-clock time the thread was created (10 ms resolution)
    started: float | None = None
    syscall: Syscall | None = None
    #: the FUSE mount / connection the task is waiting on (or whose path its syscall names)
    mountpoint: str | None = None
    conn: int | None = None
    fsname: str | None = None
    fstype: str | None = None
    #: how the connection was found ("fdinfo mnt_id", "syscall path", "daemon request", ...)
    conn_how: str | None = None
    #: ``task_struct.flags`` (PF_*), ``stat`` field 9: what sched_show_task prints as task_flags
    flags: int | None = None

    @property
    def frames(self) -> list[str]:
        """Function names of the kernel stack, innermost first."""
        return [_func(line) for line in self.stack]

    @property
    def fuse_wait(self) -> bool:
        """Waiting for a FUSE reply (``request_wait_answer``)."""
        return self.wchan == FUSE_REPLY_WAIT or FUSE_REPLY_WAIT in self.frames

    @property
    def in_fuse(self) -> bool:
        """Blocked somewhere in FUSE code (not the daemon's own /dev/fuse read)."""
        if self.fuse_wait:
            return True
        return any(f.startswith("fuse_") and not f.startswith("fuse_dev_") for f in self.frames)

    @property
    def blocked(self) -> bool:
        """In state D, or asleep in FUSE."""
        return self.state == "D" or (self.state == "S" and self.in_fuse)

    @property
    def fuse_op(self) -> str | None:
        """The FUSE operation the task waits in: the outermost ``fuse_`` frame (``fuse_lookup``)."""
        ops = [
            f
            for f in self.frames
            if f.startswith("fuse_") and f not in FUSE_MACHINERY and not f.startswith("fuse_dev_")
        ]
        return ops[-1] if ops else None

    @property
    def fuse_opcode(self) -> str | None:
        """The opcode of the request it waits for, as a testbed daemon's in-flight table names
        it (``write``), when the stack says (:data:`FUSE_OPCODE_FRAMES`)."""
        return next((FUSE_OPCODE_FRAMES[f] for f in self.frames if f in FUSE_OPCODE_FRAMES), None)

    @property
    def in_mm(self) -> bool:
        return any(f in MM_FRAMES for f in self.frames)

    def name(self) -> str:
        return f"{self.comm}/{self.tid}"

    def blocked_for(self, now: float | None = None) -> float | None:
        if self.last_ran is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_ran)

    def to_json(self) -> dict[str, Any]:
        return {
            "tid": self.tid,
            "pid": self.pid,
            "comm": self.comm,
            "state": self.state,
            "ppid": self.ppid,
            "wchan": self.wchan,
            "stack": self.stack,
            "switches": self.switches,
            "last_ran": self.last_ran,
            "syscall": self.syscall.to_json() if self.syscall else None,
            "fuse_wait": self.fuse_wait,
            "fuse_op": self.fuse_op,
            "mountpoint": self.mountpoint,
            "conn": self.conn,
            "fsname": self.fsname,
            "conn_how": self.conn_how,
            "flags": self.flags,
        }


def _func(line: str) -> str:
    """``[<0>] request_wait_answer+0x16a/0x290`` -> ``request_wait_answer``."""
    text = line.split("] ", 1)[-1]
    return text.split("+", 1)[0].strip()


class SchedClock:
    """Converts ``se.exec_start`` (ms on the scheduler clock) to wall-clock time.

    The scheduler clock runs close to CLOCK_MONOTONIC with a small constant offset (about 40 ms
    here); it is calibrated once against this process's own ``exec_start`` right after a sleep,
    when the process has just been scheduled in.
    """

    def __init__(self) -> None:
        self.offset: float | None = None
        self.available = os.path.exists("/proc/self/sched")
        if self.available:
            self.calibrate()

    def calibrate(self) -> None:
        best = None
        for _ in range(3):
            time.sleep(0.001)
            mono = time.monotonic()
            data = proc.read("/proc/thread-self/sched") or proc.read("/proc/self/sched")
            m = _EXEC_START.search(data or b"")
            if m is None:
                self.available = False
                return
            off = mono - float(m.group(1)) / 1000.0
            best = off if best is None else min(best, off)
        self.offset = best

    def last_ran(self, tid: int) -> float | None:
        if not self.available or self.offset is None:
            return None
        data = proc.read(f"/proc/{tid}/sched")
        m = _EXEC_START.search(data or b"")
        if m is None:
            return None
        mono = float(m.group(1)) / 1000.0 + self.offset
        return time.time() - (time.monotonic() - mono)


class Scanner:
    """Reads tasks from /proc; one instance keeps the clock calibration and the mount table."""

    def __init__(self) -> None:
        self.clock = SchedClock()
        self.self_mntns = proc.readlink("/proc/self/ns/mnt")
        self.mounts: list[MountEntry] = []
        self.refresh_mounts()

    def refresh_mounts(self) -> list[MountEntry]:
        try:
            self.mounts = mountinfo.mounts()
        except OSError:
            pass
        return self.mounts

    # -- the full scan -------------------------------------------------------------------------

    def scan(self, with_fuse_reply_waits: bool = True) -> dict[int, TaskInfo]:
        """Every blocked task on the machine: state D, or asleep in FUSE code.

        Cheap path: ``stat`` of every thread; ``wchan`` only for sleeping ones; the stack, the
        syscall and the scheduler data only for the blocked ones.
        """
        out: dict[int, TaskInfo] = {}
        for pid_s in os.listdir("/proc"):
            if not pid_s.isdigit():
                continue
            try:
                tids = os.listdir(f"/proc/{pid_s}/task")
            except OSError:
                continue
            for tid_s in tids:
                base = f"/proc/{pid_s}/task/{tid_s}"
                raw = proc.read(base + "/stat", 1024)
                head = _parse_stat(raw)
                if head is None:
                    continue
                comm, state, ppid = head
                if state not in "DS":
                    continue
                wchan = (proc.read(base + "/wchan", 256) or b"").decode(errors="replace")
                if state == "S" and not (
                    wchan == FUSE_REPLY_WAIT
                    or (wchan.startswith("fuse_") and not wchan.startswith("fuse_dev_"))
                ):
                    continue
                task = TaskInfo(int(tid_s), int(pid_s), comm, state, ppid, wchan)
                task.started = _start_time(raw)
                task.flags = _stat_flags(raw)
                self._fill(task)
                if task.blocked:
                    out[task.tid] = task
        self._locate_all(out)
        return out

    def read_task(self, tid: int) -> TaskInfo | None:
        """One task by tid (any state), with stack and syscall."""
        tgid = proc.tgid_of(tid)
        if tgid is None:
            return None
        base = f"/proc/{tgid}/task/{tid}"
        raw = proc.read(base + "/stat", 1024)
        head = _parse_stat(raw)
        if head is None:
            return None
        comm, state, ppid = head
        wchan = (proc.read(base + "/wchan", 256) or b"").decode(errors="replace")
        task = TaskInfo(tid, tgid, comm, state, ppid, wchan)
        task.started = _start_time(raw)
        task.flags = _stat_flags(raw)
        if state in "DS":
            self._fill(task)
            self._locate_all({tid: task})
        return task

    def still_blocked(self, tids: Iterable[int]) -> list[TaskInfo]:
        """Those of ``tids`` that still exist and are still blocked (recovery's check)."""
        out = []
        for tid in tids:
            t = self.read_task(tid)
            if t is not None and t.blocked:
                out.append(t)
        return out

    # -- details -------------------------------------------------------------------------------

    def _fill(self, task: TaskInfo) -> None:
        base = f"/proc/{task.pid}/task/{task.tid}"
        raw = (proc.read(base + "/stack") or b"").decode(errors="replace")
        task.stack = [line.split("] ", 1)[-1] for line in raw.splitlines() if line.strip()]
        ss = (proc.read(base + "/schedstat", 256) or b"").split()
        task.switches = int(ss[2]) if len(ss) >= 3 else None
        if task.state in "DS":
            task.last_ran = self.clock.last_ran(task.tid)
        call = proc.syscall_of(task.tid)
        if call is not None:
            nr, args = call
            task.syscall = Syscall(nr, syscalls.name_of(nr), args)

    def _locate_all(self, tasks: dict[int, TaskInfo]) -> None:
        """Resolve each task's syscall files and the FUSE mount they are on."""
        in_mm = {t.pid for t in tasks.values() if t.in_mm}
        for t in tasks.values():
            if t.syscall is not None:
                self._resolve_syscall(t, read_mem=t.pid not in in_mm)
            self._locate(t)

    def _resolve_syscall(self, t: TaskInfo, read_mem: bool) -> None:
        sc = t.syscall
        assert sc is not None
        for item in syscalls.file_args(sc.name):
            if item[0] == "fd":
                fd = sc.args[item[1]] & 0xFFFFFFFF
                if fd >= 0x80000000:
                    continue
                sc.fds.append(fd)
                info = (proc.read(f"/proc/{t.pid}/fdinfo/{fd}", 4096) or b"").decode(
                    errors="replace"
                )
                m = re.search(r"^mnt_id:\s*(\d+)", info, re.M)
                if m:
                    sc.mnt_ids.append(int(m.group(1)))
                link = proc.readlink(f"/proc/{t.pid}/fd/{fd}")
                if link and link.startswith("/"):
                    sc.paths.append(link)
            elif read_mem:
                _kind, arg, dirfd_arg = item  # type: ignore[misc]
                raw = proc.read_cstring(t.pid, sc.args[arg])
                if raw is None:
                    continue
                sc.paths.append(
                    self._absolute(
                        t.pid,
                        os.fsdecode(raw),
                        sc.args[dirfd_arg] if dirfd_arg is not None else AT_FDCWD,
                    )
                )

    def _absolute(self, pid: int, path: str, dirfd: int) -> str:
        if path.startswith("/"):
            return os.path.normpath(path)
        dirfd &= 0xFFFFFFFF
        base = (
            proc.readlink(f"/proc/{pid}/cwd")
            if dirfd == AT_FDCWD
            else proc.readlink(f"/proc/{pid}/fd/{dirfd}")
        )
        if not base:
            return path
        return os.path.normpath(os.path.join(base, path)) if path else base

    def mounts_of(self, pid: int) -> list[MountEntry]:
        """The mount table as task ``pid`` sees it (its own mount namespace)."""
        ns = proc.readlink(f"/proc/{pid}/ns/mnt")
        if ns is None or ns == self.self_mntns:
            return self.mounts
        try:
            return mountinfo.mounts(f"/proc/{pid}/mountinfo")
        except OSError:
            return self.mounts

    def _locate(self, t: TaskInfo) -> None:
        if t.syscall is None:
            return
        table = self.mounts_of(t.pid)
        entry = None
        if t.syscall.mnt_ids:
            by_id = {m.mount_id: m for m in table}
            for mid in t.syscall.mnt_ids:
                if mid in by_id and by_id[mid].is_fuse:
                    entry, t.conn_how = by_id[mid], "fdinfo mnt_id"
                    break
        if entry is None:
            for p in t.syscall.paths:
                m = mount_of_path(p, table)
                if m is not None and m.is_fuse:
                    entry, t.conn_how = m, "syscall path"
                    break
        if entry is not None:
            set_mount(t, entry)


def set_mount(t: TaskInfo, entry: MountEntry) -> None:
    t.mountpoint, t.conn, t.fsname, t.fstype = (
        entry.mountpoint,
        entry.conn,
        entry.source,
        entry.fstype,
    )


def mount_of_path(path: str, table: list[MountEntry]) -> MountEntry | None:
    """The mount ``path`` is on: the longest mount point that is a prefix (the topmost one)."""
    best: MountEntry | None = None
    for m in table:
        mp = m.mountpoint
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mountpoint):
                best = m
    return best


def _parse_stat(data: bytes | None) -> tuple[str, str, int] | None:
    """(comm, state, ppid) from a ``stat`` line."""
    if not data:
        return None
    lp, rp = data.find(b"("), data.rfind(b")")
    if lp < 0 or rp < 0:
        return None
    rest = data[rp + 2 :].split()
    if len(rest) < 2:
        return None
    return data[lp + 1 : rp].decode(errors="replace"), rest[0].decode(), int(rest[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_time(data: bytes | None) -> float | None:
    """Wall-clock time the thread started (``stat`` field 22, ticks since boot)."""
    ticks = proc.stat_start_ticks(data)
    if ticks is None:
        return None
    since_boot = ticks / _CLK_TCK
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)


def _stat_flags(data: bytes | None) -> int | None:
    """``task_struct.flags`` (PF_*), ``stat`` field 9."""
    rest = data[data.rfind(b")") + 2 :].split() if data else []
    return int(rest[6]) if len(rest) > 6 else None
