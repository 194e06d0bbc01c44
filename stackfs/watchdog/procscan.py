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
``fuse_connection: N`` in its fdinfo (Linux 6.x shows it), found by :func:`fuse_daemons`.

Reading ``/proc/PID/mem`` takes the target's mmap lock; a task blocked in a page fault on a
FUSE file holds it, so the path of a task whose process has a task in a fault is not read.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stackfs import control, mountinfo
from stackfs.mountinfo import MountEntry

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
#: Stack frames that mean "the task is inside a page fault or an mmap call" (mmap_lock held).
MM_FRAMES = ("handle_mm_fault", "do_user_addr_fault", "exc_page_fault", "vm_mmap_pgoff",
             "do_mmap", "__do_munmap", "do_vmi_munmap", "mmap_region", "__mm_populate")

AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel prints an int argument

#: x86_64 syscalls that name a file: nr -> (name, [("path", arg, dirfd-arg|None) | ("fd", arg)]).
_X86_64: dict[int, tuple[str, list[tuple]]] = {
    0: ("read", [("fd", 0)]), 1: ("write", [("fd", 0)]), 2: ("open", [("path", 0, None)]),
    3: ("close", [("fd", 0)]),
    4: ("stat", [("path", 0, None)]), 5: ("fstat", [("fd", 0)]),
    6: ("lstat", [("path", 0, None)]), 8: ("lseek", [("fd", 0)]),
    16: ("ioctl", [("fd", 0)]), 17: ("pread64", [("fd", 0)]), 18: ("pwrite64", [("fd", 0)]),
    19: ("readv", [("fd", 0)]), 20: ("writev", [("fd", 0)]), 21: ("access", [("path", 0, None)]),
    40: ("sendfile", [("fd", 1), ("fd", 0)]), 59: ("execve", [("path", 0, None)]),
    72: ("fcntl", [("fd", 0)]), 73: ("flock", [("fd", 0)]), 74: ("fsync", [("fd", 0)]),
    75: ("fdatasync", [("fd", 0)]), 76: ("truncate", [("path", 0, None)]),
    77: ("ftruncate", [("fd", 0)]), 78: ("getdents", [("fd", 0)]),
    80: ("chdir", [("path", 0, None)]), 81: ("fchdir", [("fd", 0)]),
    82: ("rename", [("path", 0, None), ("path", 1, None)]), 83: ("mkdir", [("path", 0, None)]),
    84: ("rmdir", [("path", 0, None)]), 85: ("creat", [("path", 0, None)]),
    86: ("link", [("path", 0, None), ("path", 1, None)]), 87: ("unlink", [("path", 0, None)]),
    88: ("symlink", [("path", 1, None)]), 89: ("readlink", [("path", 0, None)]),
    90: ("chmod", [("path", 0, None)]), 91: ("fchmod", [("fd", 0)]),
    92: ("chown", [("path", 0, None)]), 93: ("fchown", [("fd", 0)]),
    94: ("lchown", [("path", 0, None)]), 132: ("utime", [("path", 0, None)]),
    133: ("mknod", [("path", 0, None)]), 137: ("statfs", [("path", 0, None)]),
    138: ("fstatfs", [("fd", 0)]), 188: ("setxattr", [("path", 0, None)]),
    189: ("lsetxattr", [("path", 0, None)]), 190: ("fsetxattr", [("fd", 0)]),
    191: ("getxattr", [("path", 0, None)]), 192: ("lgetxattr", [("path", 0, None)]),
    193: ("fgetxattr", [("fd", 0)]), 194: ("listxattr", [("path", 0, None)]),
    195: ("llistxattr", [("path", 0, None)]), 196: ("flistxattr", [("fd", 0)]),
    197: ("removexattr", [("path", 0, None)]), 198: ("lremovexattr", [("path", 0, None)]),
    199: ("fremovexattr", [("fd", 0)]), 217: ("getdents64", [("fd", 0)]),
    235: ("utimes", [("path", 0, None)]), 257: ("openat", [("path", 1, 0)]),
    258: ("mkdirat", [("path", 1, 0)]), 259: ("mknodat", [("path", 1, 0)]),
    260: ("fchownat", [("path", 1, 0)]), 261: ("futimesat", [("path", 1, 0)]),
    262: ("newfstatat", [("path", 1, 0)]), 263: ("unlinkat", [("path", 1, 0)]),
    264: ("renameat", [("path", 1, 0), ("path", 3, 2)]),
    265: ("linkat", [("path", 1, 0), ("path", 3, 2)]), 266: ("symlinkat", [("path", 2, 1)]),
    267: ("readlinkat", [("path", 1, 0)]), 268: ("fchmodat", [("path", 1, 0)]),
    269: ("faccessat", [("path", 1, 0)]), 275: ("splice", [("fd", 0), ("fd", 2)]),
    280: ("utimensat", [("path", 1, 0)]), 285: ("fallocate", [("fd", 0)]),
    295: ("preadv", [("fd", 0)]), 296: ("pwritev", [("fd", 0)]),
    316: ("renameat2", [("path", 1, 0), ("path", 3, 2)]), 322: ("execveat", [("path", 1, 0)]),
    326: ("copy_file_range", [("fd", 0), ("fd", 2)]), 332: ("statx", [("path", 1, 0)]),
    437: ("openat2", [("path", 1, 0)]), 439: ("faccessat2", [("path", 1, 0)]),
    452: ("fchmodat2", [("path", 1, 0)]),
}
SYSCALLS = _X86_64 if platform.machine() == "x86_64" else {}

_EXEC_START = re.compile(rb"se\.exec_start\s*:\s*([0-9.]+)")


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


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
        shown = [f'"{p}"' for p in self.paths] + [f"fd {fd}" for fd in self.fds]
        return f"{self.name}({', '.join(shown)})"

    def to_json(self) -> dict[str, Any]:
        return {"nr": self.nr, "name": self.name, "args": [hex(a) for a in self.args],
                "paths": self.paths, "fds": self.fds}


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
        ops = [f for f in self.frames if f.startswith("fuse_") and f not in FUSE_MACHINERY
               and not f.startswith("fuse_dev_")]
        return ops[-1] if ops else None

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
            "tid": self.tid, "pid": self.pid, "comm": self.comm, "state": self.state,
            "ppid": self.ppid, "wchan": self.wchan, "stack": self.stack,
            "switches": self.switches, "last_ran": self.last_ran,
            "syscall": self.syscall.to_json() if self.syscall else None,
            "fuse_wait": self.fuse_wait, "fuse_op": self.fuse_op,
            "mountpoint": self.mountpoint, "conn": self.conn, "fsname": self.fsname,
            "conn_how": self.conn_how,
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
            data = _read("/proc/thread-self/sched") or _read("/proc/self/sched")
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
        data = _read(f"/proc/{tid}/sched")
        m = _EXEC_START.search(data or b"")
        if m is None:
            return None
        mono = float(m.group(1)) / 1000.0 + self.offset
        return time.time() - (time.monotonic() - mono)


def read_cstring(pid: int, addr: int, limit: int = 4096) -> str | None:
    """The NUL-terminated string at ``addr`` in process ``pid`` (``/proc/PID/mem``)."""
    if addr == 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    out = b""
    try:
        while len(out) < limit:
            want = 4096 - (addr + len(out)) % 4096  # never cross into an unmapped page blindly
            try:
                chunk = os.pread(fd, want, addr + len(out))
            except OSError:
                break
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return os.fsdecode(out)
            out += chunk
    finally:
        os.close(fd)
    return os.fsdecode(out) if out else None


class Scanner:
    """Reads tasks from /proc; one instance keeps the clock calibration and the mount table."""

    def __init__(self) -> None:
        self.clock = SchedClock()
        self.self_mntns = _readlink("/proc/self/ns/mnt")
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
                raw = _read(base + "/stat", 1024)
                head = _parse_stat(raw)
                if head is None:
                    continue
                comm, state, ppid = head
                if state not in "DS":
                    continue
                wchan = (_read(base + "/wchan", 256) or b"").decode(errors="replace")
                if state == "S" and not (
                    wchan == FUSE_REPLY_WAIT
                    or (wchan.startswith("fuse_") and not wchan.startswith("fuse_dev_"))
                ):
                    continue
                task = TaskInfo(int(tid_s), int(pid_s), comm, state, ppid, wchan)
                task.started = _start_time(raw)
                self._fill(task)
                if task.blocked:
                    out[task.tid] = task
        self._locate_all(out)
        return out

    def read_task(self, tid: int) -> TaskInfo | None:
        """One task by tid (any state), with stack and syscall."""
        tgid = _tgid(tid)
        if tgid is None:
            return None
        base = f"/proc/{tgid}/task/{tid}"
        raw = _read(base + "/stat", 1024)
        head = _parse_stat(raw)
        if head is None:
            return None
        comm, state, ppid = head
        wchan = (_read(base + "/wchan", 256) or b"").decode(errors="replace")
        task = TaskInfo(tid, tgid, comm, state, ppid, wchan)
        task.started = _start_time(raw)
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
        raw = (_read(base + "/stack") or b"").decode(errors="replace")
        task.stack = [line.split("] ", 1)[-1] for line in raw.splitlines() if line.strip()]
        ss = (_read(base + "/schedstat", 256) or b"").split()
        task.switches = int(ss[2]) if len(ss) >= 3 else None
        if task.state in "DS":
            task.last_ran = self.clock.last_ran(task.tid)
        sc = (_read(base + "/syscall", 512) or b"").decode(errors="replace").split()
        if sc and sc[0].lstrip("-").isdigit() and int(sc[0]) >= 0:
            nr = int(sc[0])
            args = [int(a, 16) for a in sc[1:7]]
            name, _spec = SYSCALLS.get(nr, (f"syscall_{nr}", []))
            task.syscall = Syscall(nr, name, args)

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
        _name, spec = SYSCALLS.get(sc.nr, ("", []))
        for item in spec:
            if item[0] == "fd":
                fd = sc.args[item[1]] & 0xFFFFFFFF
                if fd >= 0x80000000:
                    continue
                sc.fds.append(fd)
                info = (_read(f"/proc/{t.pid}/fdinfo/{fd}", 4096) or b"").decode(errors="replace")
                m = re.search(r"^mnt_id:\s*(\d+)", info, re.M)
                if m:
                    sc.mnt_ids.append(int(m.group(1)))
                link = _readlink(f"/proc/{t.pid}/fd/{fd}")
                if link and link.startswith("/"):
                    sc.paths.append(link)
            elif read_mem:
                _kind, arg, dirfd_arg = item
                raw = read_cstring(t.pid, sc.args[arg])
                if raw is None:
                    continue
                sc.paths.append(self._absolute(t.pid, raw, sc.args[dirfd_arg] if dirfd_arg is
                                               not None else AT_FDCWD))

    def _absolute(self, pid: int, path: str, dirfd: int) -> str:
        if path.startswith("/"):
            return os.path.normpath(path)
        dirfd &= 0xFFFFFFFF
        base = (_readlink(f"/proc/{pid}/cwd") if dirfd == AT_FDCWD
                else _readlink(f"/proc/{pid}/fd/{dirfd}"))
        if not base:
            return path
        return os.path.normpath(os.path.join(base, path)) if path else base

    def mounts_of(self, pid: int) -> list[MountEntry]:
        """The mount table as task ``pid`` sees it (its own mount namespace)."""
        ns = _readlink(f"/proc/{pid}/ns/mnt")
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
        entry.mountpoint, entry.conn, entry.source, entry.fstype)


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
    rest = data[rp + 2:].split()
    if len(rest) < 2:
        return None
    return data[lp + 1:rp].decode(errors="replace"), rest[0].decode(), int(rest[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_time(data: bytes | None) -> float | None:
    """Wall-clock time the thread started (``stat`` field 22, ticks since boot)."""
    if not data:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    if len(rest) < 20:
        return None
    since_boot = int(rest[19]) / _CLK_TCK
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)


def _tgid(tid: int) -> int | None:
    data = _read(f"/proc/{tid}/status", 1024)
    if not data:
        return None
    m = re.search(rb"^Tgid:\s*(\d+)", data, re.M)
    return int(m.group(1)) if m else None


# -- daemons ---------------------------------------------------------------------------------------


@dataclass
class DaemonView:
    """The daemon serving one FUSE connection, and (for a testbed daemon) its state snapshot."""

    conn: int
    mountpoint: str
    fsname: str
    pid: int | None
    testbed: bool
    comm: str | None = None
    alive: bool | None = None
    state: dict[str, Any] | None = None
    error: str | None = None
    #: how the daemon was found ("fsname" for testbed mounts, "/dev/fuse fdinfo" otherwise)
    how: str | None = None

    def inflight(self) -> list[dict[str, Any]]:
        return list((self.state or {}).get("inflight") or [])

    def name(self) -> str:
        return f"{self.comm or '?'}/{self.pid}" if self.pid else "unknown daemon"

    def to_json(self) -> dict[str, Any]:
        return {
            "conn": self.conn, "mountpoint": self.mountpoint, "fsname": self.fsname,
            "pid": self.pid, "comm": self.comm, "testbed": self.testbed, "alive": self.alive,
            "how": self.how, "state": self.state, "error": self.error,
        }


def fuse_daemons() -> dict[int, list[int]]:
    """conn -> pids holding ``/dev/fuse`` open for it (fdinfo ``fuse_connection``)."""
    out: dict[int, list[int]] = {}
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid_s}/fd")
        except OSError:
            continue
        for fd in fds:
            if _readlink(f"/proc/{pid_s}/fd/{fd}") != "/dev/fuse":
                continue
            info = (_read(f"/proc/{pid_s}/fdinfo/{fd}", 4096) or b"").decode(errors="replace")
            m = re.search(r"^fuse_connection:\s*(\d+)", info, re.M)
            if m:
                pids = out.setdefault(int(m.group(1)), [])
                if int(pid_s) not in pids:
                    pids.append(int(pid_s))
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    head = _parse_stat(_read(f"/proc/{pid}/stat", 1024))
    return head is not None and head[1] not in ("Z", "X")


def comm_of(pid: int) -> str | None:
    data = _read(f"/proc/{pid}/comm", 64)
    return data.decode(errors="replace").strip() if data else None


def query_daemons(
    entries: Iterable[MountEntry], *, with_state: bool = True, timeout: float = 1.0,
    foreign: dict[int, list[int]] | None = None,
) -> dict[int, DaemonView]:
    """conn -> the daemon of each mount; testbed daemons' state is read over their control socket.

    ``foreign`` is a :func:`fuse_daemons` result for mounts that are not the testbed's (their
    daemon is left unknown when it is None).
    """
    out: dict[int, DaemonView] = {}
    for e in entries:
        pid = e.daemon_pid
        view = DaemonView(e.conn, e.mountpoint, e.source, pid, e.is_testbed and pid is not None)
        if view.testbed:
            view.how = "fsname"
        elif foreign is not None and foreign.get(e.conn):
            view.pid, view.how = foreign[e.conn][0], "/dev/fuse fdinfo"
        if view.pid:
            view.alive = alive(view.pid)
            view.comm = comm_of(view.pid)
        if view.testbed and with_state and view.alive:
            try:
                view.state = control.query_pid(view.pid, {"op": "state"}, timeout=timeout)
            except (control.ControlError, OSError, ValueError) as exc:
                view.error = str(exc)
        out[e.conn] = view
    return out
