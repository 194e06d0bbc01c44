"""The in-process tier: the union's and the backends' FUSE handlers called directly.

As s3ql's ``t3_fs_api``: a filesystem object (:class:`~stackfs.union.fs.UnionFS`,
:class:`~backends.base.StoreFS`) is built over temporary directories and its pyfuse3 handlers
(``lookup``, ``create``, ``open``, ``write``, ``rename``, ``link``, ``readdir``, ...) are awaited
from a trio test with a stand-in request context. No mount, no /dev/fuse, no root: this tier
runs as any user. ``pyfuse3.readdir_reply`` needs a live FUSE request, so it is replaced by a
collector (:class:`Listing`). The mount tests (tests/union, tests/backends) stay the judge of
what the kernel makes of the replies.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from backends.passthrough import PassthroughFS
from stackfs.union import options
from stackfs.union.fs import UnionFS

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Ctx:
    """A stand-in for ``pyfuse3.RequestContext``: the caller is this test process."""

    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)
    pid: int = field(default_factory=os.getpid)
    umask: int = 0o022


class Listing(list[tuple[bytes, Any, int]]):
    """What ``readdir`` replied: (name, attributes, next offset); full after ``limit`` entries
    (the kernel's buffer), as ``readdir_reply`` says by returning False."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit

    def names(self) -> list[bytes]:
        return [n for n, _a, _o in self]


def _readdir_reply(token: Listing, name: bytes, attr: Any, next_id: int) -> bool:
    if token.limit is not None and len(token) >= token.limit:
        return False
    token.append((name, attr, next_id))
    return True


@pytest.fixture(autouse=True)
def _readdir_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "readdir_reply", _readdir_reply)


class Client:
    """Calls a filesystem's handlers the way the kernel would, by path.

    Like the kernel, it remembers an ENOSYS answer to OPEN, CREATE or OPENDIR (``fc->no_open``,
    ``no_create``, ``no_opendir``: the union's fast paths) and from then on sends no such
    request: I/O and READDIR come by inode (the handle ``-INODE`` that the stackfs patch to
    pyfuse3 passes), a new file is made with MKNOD, and no RELEASE/RELEASEDIR follows.
    """

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.ctx = Ctx()
        self.no_open = self.no_create = self.no_opendir = False

    async def lookup(self, path: str) -> pyfuse3.EntryAttributes:
        """LOOKUP of every component of ``path`` from the root."""
        ino = ROOT
        attr = await self.fs.getattr(ROOT, self.ctx)
        for part in [p for p in path.split("/") if p]:
            attr = await self.fs.lookup(ino, os.fsencode(part), self.ctx)
            if attr.st_ino == 0:  # a negative entry (cached by the kernel): ENOENT
                raise pyfuse3.FUSEError(errno.ENOENT)
            ino = attr.st_ino
        return attr

    async def ino(self, path: str) -> int:
        return int((await self.lookup(path)).st_ino)

    async def errno_of(self, coro: Any) -> int | None:
        """The errno a handler failed with (None when it succeeded)."""
        try:
            await coro
        except pyfuse3.FUSEError as exc:
            return exc.errno
        return None

    async def exists(self, path: str) -> bool:
        err = await self.errno_of(self.lookup(path))
        assert err in (None, errno.ENOENT), os.strerror(err or 0)
        return err is None

    # -- files and directories, as fuse_file_open / fuse_create_open / fuse_dir_open ----------

    async def open(self, ino: int, flags: int) -> int | None:
        """OPEN: the file handle, or None when the filesystem said ENOSYS (by inode now)."""
        if not self.no_open:
            try:
                return int((await self.fs.open(ino, flags, self.ctx)).fh)
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self.no_open = True
        return None

    async def release(self, fh: int | None) -> None:
        if fh is not None:
            await self.fs.release(fh)

    async def read(self, path: str) -> bytes:
        ino = await self.ino(path)
        fh = await self.open(ino, os.O_RDONLY)
        try:
            return bytes(await self.fs.read(-ino if fh is None else fh, 0, 1 << 20))
        finally:
            await self.release(fh)

    async def write(self, path: str, data: bytes, off: int = 0) -> None:
        ino = await self.ino(path)
        fh = await self.open(ino, os.O_WRONLY)
        try:
            assert await self.fs.write(-ino if fh is None else fh, off, data) == len(data)
        finally:
            await self.release(fh)

    async def create(self, path: str, data: bytes = b"") -> pyfuse3.EntryAttributes:
        """``open(path, O_WRONLY | O_CREAT | O_EXCL)``, a write of ``data``, ``close``."""
        parent, _, name = path.rpartition("/")
        pino, bname = await self.ino(parent), os.fsencode(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fh: int | None = None
        if not self.no_create:
            try:
                fi, attr = await self.fs.create(pino, bname, 0o100644, flags, self.ctx)
                fh = int(fi.fh)
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self.no_create = True
        if self.no_create:
            attr = await self.fs.mknod(pino, bname, 0o100644, 0, self.ctx)
            fh = await self.open(attr.st_ino, flags & ~(os.O_CREAT | os.O_EXCL))
        try:
            if data:
                handle = -attr.st_ino if fh is None else fh
                assert await self.fs.write(handle, 0, data) == len(data)
        finally:
            await self.release(fh)
        return attr

    async def readdir(self, path: str, limit: int | None = None) -> Listing:
        """Every entry READDIR returns, resuming at the offset of the last entry whenever the
        reply buffer (``limit`` entries) is full."""
        ino = await self.ino(path)
        fh: int | None = None
        if not self.no_opendir:
            try:
                fh = int(await self.fs.opendir(ino, self.ctx))
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self.no_opendir = True
        out = Listing()
        try:
            start = 0
            while True:
                token = Listing(limit)
                await self.fs.readdir(-ino if fh is None else fh, start, token)
                out += token
                if not token or limit is None or len(token) < limit:
                    break
                start = token[-1][2]
        finally:
            if fh is not None:
                await self.fs.releasedir(fh)
        return out

    async def listdir(self, path: str, limit: int | None = None) -> list[bytes]:
        """The names in directory ``path`` (``.`` and ``..`` left out)."""
        names = (await self.readdir(path, limit)).names()
        return [n for n in names if n not in (b".", b"..")]


@dataclass
class UnionTree:
    """A union (``br=upper=rw:lower=ro``) over temporary directories."""

    fs: UnionFS
    client: Client
    upper: Path
    lower: Path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture(params=["fastpath=off", "fastpath=on"])
def union_tree(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[UnionTree]:
    """``lower`` holds ``f`` ("lower f"), ``d/g`` ("lower g"), ``d/h`` and ``both``; ``upper``
    holds ``both`` ("upper both") and ``u``. Once with the kernel's fast paths off (OPEN,
    CREATE, OPENDIR answered), once on (answered ENOSYS where pyfuse3 has the stackfs patch:
    I/O and READDIR by inode)."""
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    lower.mkdir()
    _write(lower / "f", b"lower f")
    _write(lower / "d" / "g", b"lower g")
    _write(lower / "d" / "h", b"lower h")
    _write(lower / "both", b"lower both")
    _write(upper / "both", b"upper both")
    _write(upper / "u", b"upper u")
    opts = options.validate(options.parse([f"br={upper}=rw:{lower}=ro,{request.param}"]))
    fs = UnionFS(opts)
    try:
        yield UnionTree(fs, Client(fs), upper, lower)
    finally:
        fs.close()


@dataclass
class StoreTree:
    """A passthrough :class:`~backends.base.StoreFS` over a temporary store."""

    fs: PassthroughFS
    client: Client
    store: Path


@pytest.fixture
def store_tree(tmp_path: Path) -> Iterator[StoreTree]:
    """The store holds ``f`` ("store f") and ``d/g``."""
    store = tmp_path / "store"
    _write(store / "f", b"store f")
    _write(store / "d" / "g", b"store g")
    fs = PassthroughFS(store)
    yield StoreTree(fs, Client(fs), store)
