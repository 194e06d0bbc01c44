"""The union's rename gate (stackfs.union.renamegate): copy-ups shared, renames exclusive."""

from __future__ import annotations

import trio
import trio.testing

from stackfs.union.renamegate import RenameGate


def test_rename_waits_for_copy_ups_and_keeps_new_ones_out():
    gate = RenameGate()
    log: list[str] = []

    async def copy_up(name: str, hold: trio.Event) -> None:
        async with gate.shared():
            log.append(f"{name} in")
            await hold.wait()
            async with gate.shared():  # its parent's copy-up: no wait for the writer
                log.append(f"{name} parent")
        log.append(f"{name} out")

    async def rename() -> None:
        async with gate.exclusive():
            log.append("rename in")
            async with gate.shared():  # its own copy-up passes
                log.append("rename copy-up")
            async with gate.exclusive():
                log.append("rename again")
        log.append("rename out")

    async def main() -> None:
        first, second = trio.Event(), trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(copy_up, "a", first)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(rename)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.writer is not None and log == ["a in"]  # the rename waits for a
            n.start_soon(copy_up, "b", second)
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["a in"]  # b waits behind the waiting rename
            first.set()
            second.set()
        assert log == [
            "a in",
            "a parent",
            "a out",
            "rename in",
            "rename copy-up",
            "rename again",
            "rename out",
            "b in",
            "b parent",
            "b out",
        ]
        assert gate.writer is None and gate.readers == {}

    trio.run(main)


def test_cancelled_rename_lets_copy_ups_in():
    gate = RenameGate()

    async def main() -> None:
        hold = trio.Event()

        async def reader() -> None:
            async with gate.shared():
                await hold.wait()

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.05):
                async with gate.exclusive():
                    raise AssertionError("entered while a copy-up holds the gate")
            assert gate.writer is None
            async with gate.shared():  # not locked out by the cancelled rename
                pass
            hold.set()

    trio.run(main)
