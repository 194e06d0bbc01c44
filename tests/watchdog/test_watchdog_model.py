"""The graph, the detector and the report on states made by the real kernel models (no mount).

The states come from :mod:`stackfs.kernel` objects driven as a daemon would drive them; the
tasks are what /proc shows for tasks in those waits.
"""

from __future__ import annotations

import errno

import trio
import trio.testing

from stackfs.kernel.lockdep import LockDep
from stackfs.kernel.state import KernelState
from stackfs.kernel.task import Task, calls, running_as
from stackfs.watchdog import Watchdog, graph, kernlocks
from stackfs.watchdog.daemons import DaemonView
from stackfs.watchdog.detect import Detector, ModelEvent
from stackfs.watchdog.procscan import Syscall, TaskInfo
from stackfs.watchdog.report import Report, render_event

FUSE_OPEN_STACK = [
    "request_wait_answer+0x16a/0x290", "__fuse_simple_request+0x120/0x330",
    "fuse_send_open+0x9b/0xd0", "fuse_file_open+0x10a/0x1c0", "fuse_open+0x91/0x1a0",
    "do_dentry_open+0x13b/0x4b0", "vfs_open+0x2e/0xe0", "path_openat+0x7c8/0xfd0",
    "do_filp_open+0xb8/0x150", "do_sys_openat2+0x8c/0xc0", "__x64_sys_openat+0x54/0xa0",
    "do_syscall_64+0x71/0x280",
]
FUSE_RENAME_STACK = [
    "request_wait_answer+0x16a/0x290", "__fuse_simple_request+0x120/0x330",
    "fuse_rename_common+0xd5/0x1a0", "fuse_rename2+0x54/0x90", "vfs_rename+0x6e3/0xd60",
    "do_renameat2+0x4c9/0x5a0", "__x64_sys_renameat2+0x4b/0x60", "do_syscall_64+0x71/0x280",
]


class NoScanner:
    """Stands in for procscan.Scanner: tasks that are not in the scan do not exist."""

    mounts: list = []

    def read_task(self, tid):
        return None


def _task(tid, comm, stack, conn, path, *, pid=None, state="S", name="openat") -> TaskInfo:
    t = TaskInfo(tid, pid or tid, comm, state, 1, stack[0].split("+")[0], list(stack),
                 switches=5, last_ran=1.0)
    t.syscall = Syscall(257, name, [0xFFFFFF9C, 0, 0, 0, 0, 0], paths=[path])
    t.conn, t.mountpoint, t.fsname = conn, path.rsplit("/", 1)[0], f"stackfs:x:{conn}"
    return t


def _view(conn, pid, kind, state) -> DaemonView:
    return DaemonView(conn, f"/m/{kind}", f"stackfs:{kind}:{pid}", pid, True, kind, True,
                      state=state, how="fsname")


def _aufs_over_afs_states():
    """Seed 000: the union's worker holds the AFS inode's i_rwsem (copy-up) and opens it;
    AFS open takes the same i_rwsem in osi_VM_FlushPages."""
    union, afs = KernelState(), KernelState()
    mv, worker = Task(77, "mv"), Task(78, "python3")
    out = {}

    async def main():
        rid = union.inflight.begin("rename", 1, b"a", mv.pid)
        union.inflight.set_worker(rid, worker.pid)
        sem = afs.locks.i_rwsem(5, "/a (ino 5)")
        with calls("vfs_setxattr", "au_cpup_locked"):
            await sem.down_write(worker)
        afs.inflight.begin("open", 5, None, worker.pid)
        async with trio.open_nursery() as n:
            async def open_again():
                with calls("afs_linux_open", "afs_open", "osi_FlushPages",
                           "osi_VM_FlushPages", "afs_linux_lock_inode"):
                    await sem.down_write(worker)
            n.start_soon(open_again)
            await trio.testing.wait_all_tasks_blocked()
            out["union"], out["afs"] = union.snapshot(), afs.snapshot()
            n.cancel_scope.cancel()

    trio.run(main)
    return out["union"], out["afs"]


def test_recursive_lock_across_layers_is_a_one_task_cycle():
    union_state, afs_state = _aufs_over_afs_states()
    views = {50: _view(50, 1000, "union", union_state), 51: _view(51, 2000, "afs", afs_state)}
    tasks = {
        77: _task(77, "mv", FUSE_RENAME_STACK, 50, "/m/union/b", name="renameat2"),
        78: _task(78, "python3", FUSE_OPEN_STACK, 51, "/m/afs/a", pid=1000),
    }
    g = graph.build(tasks, views, NoScanner(), {50: 1, 51: 1})
    # mv -> union rename -> worker 78 -> AFS open -> i_rwsem ino:5 -> held by 78
    assert g.edge("task:77", "req:1000:1").kind == "fuse_wait"
    assert g.edge("req:1000:1", "task:78").kind == "served_by"
    assert g.edge("task:78", "req:2000:1").kind == "fuse_wait"
    [cycle] = graph.find_cycles(g)
    assert cycle.kind == "recursive_locking"
    assert cycle.tasks == [78]
    [seg] = cycle.segments
    assert seg.wait_at == "afs_linux_lock_inode" and seg.hold_at == "au_cpup_locked"
    r = Report("deadlock", cycle.summary, 0.0, 1.0, cycle=cycle, cycles=[cycle], graph=g,
               daemons=views)
    text = r.text()
    assert "WARNING: possible recursive locking detected" in text
    assert "python3/78 is trying to acquire lock:" in text
    # lockdep's print_lock(), as --kmsg writes it (the modelled lock's key for the address)
    assert "ino:5 (i_rwsem){+.+.}-{4:4}, at: afs_linux_lock_inode" in text
    assert "but task is already holding lock:" in text
    assert "ino:5 (i_rwsem){+.+.}-{4:4}, at: au_cpup_locked" in text
    assert "1 lock held by python3/78:" in text
    assert text.count("  lock(i_rwsem);") == 2
    assert "the wait-for cycle:" in text  # then the testbed's evidence


def test_abba_between_two_tasks():
    state = KernelState()
    a, b = Task(81, "cp"), Task(82, "mv")

    async def main():
        l5, l6 = state.locks.i_rwsem(5, "/x"), state.locks.i_rwsem(6, "/y")
        state.inflight.begin("open", 6, None, a.pid)
        state.inflight.begin("open", 5, None, b.pid)
        await l5.down_write(a)
        await l6.down_write(b)
        async with trio.open_nursery() as n:
            n.start_soon(l6.down_write, a)
            n.start_soon(l5.down_write, b)
            await trio.testing.wait_all_tasks_blocked()
            snap = state.snapshot()
            n.cancel_scope.cancel()
        return snap

    snap = trio.run(main)
    views = {51: _view(51, 2000, "afs", snap)}
    tasks = {81: _task(81, "cp", FUSE_OPEN_STACK, 51, "/m/afs/y"),
             82: _task(82, "mv", FUSE_OPEN_STACK, 51, "/m/afs/x")}
    g = graph.build(tasks, views, NoScanner(), {51: 2})
    [cycle] = graph.find_cycles(g)
    assert cycle.kind == "lock_inversion" and sorted(cycle.tasks) == [81, 82]
    r = Report("deadlock", cycle.summary, 0.0, 1.0, cycle=cycle, cycles=[cycle], graph=g,
               daemons=views)
    text = r.text()
    assert "WARNING: possible circular locking dependency detected" in text
    assert "CPU0" in text and "CPU1" in text and "*** DEADLOCK ***" in text
    # both locks held, both wanted: four lock() rows
    assert sum(1 for line in text.splitlines() if line.strip().startswith("lock(i_rwsem")) == 4


def test_hang_without_cycle_ends_at_the_daemon():
    state = KernelState()
    state.inflight.begin("lookup", 1, b"hang1", 90)
    views = {52: _view(52, 3000, "testfs-hang", state.snapshot())}
    tasks = {90: _task(90, "stat", FUSE_OPEN_STACK, 52, "/m/testfs-hang/hang1")}
    g = graph.build(tasks, views, NoScanner(), {52: 1})
    assert graph.find_cycles(g) == []
    [e] = [e for e in g.edges if e.kind == "handler"]
    assert e.src == "req:3000:1" and e.dst == "daemon:3000"


def test_kernel_lock_inference_from_stacks():
    helper = TaskInfo(11, 10, "helper", "D", 1, "filename_create",
                      ["filename_create+0xaf/0x190", "do_mkdirat+0x58/0x190"])
    helper.syscall = Syscall(83, "mkdir", [0] * 6, paths=["/mnt/d/new"])
    [w] = kernlocks.waits_for(helper)
    assert w.lock.path == "/mnt/d" and w.mode == "write" and w.at == "filename_create"
    caller = TaskInfo(12, 12, "stat", "S", 1, "request_wait_answer",
                      ["request_wait_answer+0x1", "fuse_lookup+0x1", "__lookup_slow+0x1",
                       "walk_component+0x1"])
    caller.syscall = Syscall(332, "statx", [0] * 6, paths=["/mnt/d/x/y"])
    caller.mountpoint = "/mnt"
    # without the daemon's word every ancestor inside the mount is a candidate
    hs = kernlocks.holds(caller)
    assert [h.lock.path for h in hs] == ["/mnt/d/x", "/mnt/d", "/mnt"] and hs[0].ambiguous
    # with the LOOKUP's name the directory is known
    [h] = kernlocks.holds(caller, lookup_name="x")
    assert h.lock.path == "/mnt/d" and h.mode == "read" and not h.ambiguous
    assert kernlocks.conflicts("write", "read") and not kernlocks.conflicts("read", "read")


def test_oops_and_lockdep_events_read_like_the_kernel():
    state = KernelState()

    async def main():
        dc = state.dcache("nfs")
        with running_as(Task(4242, "ls")), calls("do_sys_open", "path_openat", "lookup_open",
                                                 "nfs_atomic_open", "nfs_lookup"):
            d = dc.d_alloc(1, "f")
            dc.d_add(d, 5)
            try:
                dc.d_splice_alias(6, d)
            except Exception:  # noqa: BLE001 - the model's Oops
                pass

    trio.run(main)
    dep = LockDep(state.events)
    a, b = Task(1, "t1"), Task(2, "t2")
    dep.lock_acquire(a, "i_rwsem ino:5", "write", ("vfs_rename",))
    dep.lock_acquire(a, "i_rwsem ino:6", "write", ("lock_two_directories",))
    dep.lock_release(a, "i_rwsem ino:6")
    dep.lock_release(a, "i_rwsem ino:5")
    dep.lock_acquire(b, "i_rwsem ino:6", "write", ("do_truncate",))
    dep.lock_acquire(b, "i_rwsem ino:5", "write", ("notify_change",))
    view = _view(53, 4000, "nfs", state.snapshot())
    det = Detector(since=0.0)
    events = det.new_events({53: view})
    assert [e.type for e in events] == ["oops", "lock_inversion"]
    assert det.new_events({53: view}) == []  # each event once
    oops = "\n".join(render_event(events[0]))
    assert "kernel BUG at fs/dcache.c" in oops and "RIP: 0010:d_splice_alias" in oops
    assert 'PID: 4242  COMMAND: "ls"' in oops
    assert " #0 d_splice_alias\n #1 nfs_lookup\n #2 nfs_atomic_open" in oops
    inv = "\n".join(render_event(events[1]))
    assert "WARNING: possible circular locking dependency detected" in inv
    assert "Possible unsafe locking scenario" in inv
    assert isinstance(events[0], ModelEvent)


def test_events_older_than_the_watchdog_are_ignored():
    state = KernelState()
    state.events.record("oops", "old", [], {})
    det = Detector()
    assert det.new_events({1: _view(1, 5, "x", state.snapshot())}) == []


def test_workload_error_gives_a_report(tmp_path):
    wd = Watchdog([str(tmp_path / "not-mounted")], threshold=1.0, report_dir=tmp_path / "r")
    assert wd.poll() is None
    wd.workload_error(1234, "cat", "open", "/u/f", errno.ESTALE, expected="the new data")
    report = wd.poll()
    assert report is not None and report.verdict == "error"
    assert "cat/1234: open(\"/u/f\") = -ESTALE (Stale file handle), expected the new data" \
        in report.text()
    assert (tmp_path / "r" / "report.json").exists()
