"""``python -m stackfs.repro.mmapio``: I/O whose user buffer is an mmap of another file (seed 004).

No standard tool writes a file from a buffer that is a shared mapping of another file, which
is what seed 004's deadlock needs::

    mmapio --write A --from B --count N [--offset O] [--src-offset S] [--go DIR --parties K]

maps ``count`` bytes of ``B`` at ``src-offset`` (MAP_SHARED, not touched: the kernel faults the
pages in while it pins the buffer for the write) and ``pwrite``\\ s them to ``A`` at ``offset``
with ``O_DIRECT`` (``--buffered`` without), repeating after a short write as any careful program
does. ``--read`` does the opposite direction: ``read(2)`` from ``A`` (at ``offset``, after an
``lseek``) into a writable shared mapping of ``B``, whose copy-out faults ``B``'s pages for
write. ``--go DIR --parties K`` starts the I/O only when K helpers are ready (each creates
``DIR/ready.PID``): the workload's common start line. The process's comm is ``mmapio``.

Exit status 0 when all ``count`` bytes were transferred; 1 with ``mmapio: ...: <strerror>`` on
stderr (C locale message) otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import mmap
import os
import sys
import time

from stackfs.linux import libc

COMM = b"mmapio"


def _set_comm() -> None:
    with contextlib.suppress(OSError):
        libc.set_thread_name(COMM)


def _go(directory: str, parties: int, timeout: float = 30.0) -> None:
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, f"ready.{os.getpid()}"), "w").close()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sum(n.startswith("ready.") for n in os.listdir(directory)) >= parties:
            return
        time.sleep(0.001)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options (shared by ``python -m stackfs.repro.mmapio`` and ``stackfs mmapio``)."""
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--write", metavar="A", help="pwrite to A from the mapping of B")
    how.add_argument("--read", metavar="A", help="pread from A into the mapping of B")
    p.add_argument("--from", dest="mapped", metavar="B", required=True, help="the mapped file")
    p.add_argument("--count", type=int, required=True, help="bytes to transfer")
    p.add_argument("--offset", type=int, default=0, help="offset in A")
    p.add_argument(
        "--src-offset",
        type=int,
        default=0,
        help="offset of the mapping in B (a multiple of the page size)",
    )
    p.add_argument("--buffered", action="store_true", help="no O_DIRECT")
    p.add_argument("--go", metavar="DIR", help="wait for --parties helpers in DIR first")
    p.add_argument("--parties", type=int, default=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmapio", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Do the I/O (see the module docstring); the exit status."""
    _set_comm()
    target = args.write or args.read
    try:
        mfd = os.open(args.mapped, os.O_RDONLY if args.write else os.O_RDWR)
        prot = mmap.PROT_READ if args.write else mmap.PROT_READ | mmap.PROT_WRITE
        m = mmap.mmap(mfd, args.count, mmap.MAP_SHARED, prot, offset=args.src_offset)
        flags = (os.O_WRONLY if args.write else os.O_RDONLY) | (0 if args.buffered else os.O_DIRECT)
        fd = os.open(target, flags)
    except OSError as exc:
        print(f"mmapio: {exc.filename}: {os.strerror(exc.errno or 0)}", file=sys.stderr)
        return 1
    if args.go:
        _go(args.go, args.parties)
    view = memoryview(m)
    reader = io.FileIO(fd, "r", closefd=False)  # readinto: read(2) into the mapping
    done = 0
    try:
        while done < args.count:
            if args.write:
                n = os.pwrite(fd, view[done:], args.offset + done)
            else:
                os.lseek(fd, args.offset + done, os.SEEK_SET)
                n = reader.readinto(view[done:]) or 0
            if n == 0:
                break
            done += n
    except OSError as exc:
        verb = "write" if args.write else "read"
        print(
            f"mmapio: {verb} {target} after {done} bytes: {os.strerror(exc.errno or 0)}",
            file=sys.stderr,
        )
        return 1
    finally:
        view.release()
    print(
        f"mmapio: {'wrote' if args.write else 'read'} {done} bytes "
        f"{'to' if args.write else 'from'} {target}"
    )
    return 0 if done == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
