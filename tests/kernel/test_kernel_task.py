"""Tasks and model call chains (stackfs.kernel.task)."""

from __future__ import annotations

import os
import subprocess
import threading

import trio

from stackfs.kernel.task import (
    VANISHED_COMM,
    Task,
    calls,
    chain_of,
    current_chain,
    get_current_task,
    running_as,
    task_of,
)


def test_from_pid_reads_comm():
    me = Task.from_pid(threading.get_native_id())
    with open(f"/proc/{os.getpid()}/comm") as f:
        assert me.comm == f.read().strip()
    assert me.to_json() == {"pid": me.pid, "comm": me.comm}


def test_from_pid_of_exited_task():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert Task.from_pid(proc.pid) == Task(proc.pid, VANISHED_COMM)


def test_from_pid_of_other_thread():
    seen = {}

    def run():
        seen["tid"] = threading.get_native_id()

    t = threading.Thread(target=run, name="kthr")
    t.start()
    t.join()
    # the thread is gone now: tolerated
    assert Task.from_pid(seen["tid"]).pid == seen["tid"]


async def test_chains_are_per_trio_task():
    seen = {}

    async def worker(name: str, tag: str) -> None:
        with running_as(Task(len(seen) + 100, name)):
            with calls("do_sys_open", tag):
                await trio.sleep(0)
                with calls("inner"):
                    seen[name] = (get_current_task(), current_chain())
                    await trio.sleep(0)

    with calls("outer"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "a", "path_a")
            nursery.start_soon(worker, "b", "path_b")
        assert current_chain() == ("outer",)
    assert current_chain() == ()
    assert seen["a"][1] == ("outer", "do_sys_open", "path_a", "inner")
    assert seen["b"][1] == ("outer", "do_sys_open", "path_b", "inner")
    assert seen["a"][0].comm == "a" and seen["b"][0].comm == "b"


async def test_read_another_tasks_chain_and_task():
    got = {}
    ready = trio.Event()
    release = trio.Event()

    async def sleeper(task_status=trio.TASK_STATUS_IGNORED):
        with running_as(Task(7, "mv")), calls("vfs_rename", "lock_rename"):
            got["ctx"] = trio.lowlevel.current_task().context
            ready.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await ready.wait()
        assert chain_of(got["ctx"]) == ("vfs_rename", "lock_rename")
        assert task_of(got["ctx"]) == Task(7, "mv")
        release.set()
    assert chain_of(got["ctx"]) == ()


def test_default_current_task_is_the_daemon():
    assert get_current_task().pid == os.getpid()
