"""The Python floor of ``union_bench.py``: the least a pyfuse3 filesystem can do for the
benchmark's requests.

A bare pyfuse3 passthrough over the same branches (upper first), with the same kernel fast
paths as stackfs' defaults (ENOSYS to OPEN, OPENDIR and CREATE, the kernel's readdir cache,
I/O by inode through the patched pyfuse3, the same readahead), so the kernel sends it the
same requests.
It has no whiteouts, no inode-number scheme, no in-flight tracking, no locks; a lookup takes the
first branch that has the name, a listing merges the names, a write copies the file up with
one ``copy_file_range`` loop. It is correct only for what the benchmark does (read, stat,
list, create/unlink new names, write new files, append to lower files); what it costs per
request is what any pyfuse3 + trio filesystem pays on this machine.

    python bench/pyfuse3_floor.py UPPER LOWER1 LOWER2 MOUNTPOINT
"""

from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
import sys

import pyfuse3
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stackfs import mountinfo  # noqa: E402

TIMEOUT = 5.0  # the union's default entry/attr timeout


class Floor(pyfuse3.Operations):
    enable_writeback_cache = False  # as stackfs' default
    enable_inode_handles = True  # the patched pyfuse3: fh -INODE without OPEN
    enable_atomic_o_trunc = False

    def __init__(self, branches: list[str], mountpoint: str) -> None:
        super().__init__()
        self.branches = branches
        self.mountpoint = os.path.abspath(mountpoint)
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self.top: dict[int, int] = {pyfuse3.ROOT_INODE: 0}
        self.inos: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self.fds: dict[int, tuple[int, bool]] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1

    def init(self) -> None:
        trio.lowlevel.spawn_system_task(self._read_ahead)

    async def _read_ahead(self) -> None:
        """The union's read_ahead_kb=1024, after the INIT reply (see stackfs.union.fastpath)."""
        await trio.sleep(0)
        m = mountinfo.find(self.mountpoint)
        if m is not None:
            with open(f"/sys/class/bdi/{m.major}:{m.minor}/read_ahead_kb", "w") as f:
                f.write("1024\n")

    def _ino(self, path: str, top: int) -> int:
        ino = self.inos.get(path)
        if ino is None:
            ino = self.inos[path] = self.next_ino
            self.next_ino += 1
            self.paths[ino] = path
        self.top[ino] = top
        return ino

    def _find(self, path: str) -> tuple[int, os.stat_result] | None:
        for i, b in enumerate(self.branches):
            try:
                return i, os.lstat(os.path.join(b, path))
            except FileNotFoundError:
                continue
        return None

    def _attr(self, st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        for k in (
            "st_mode",
            "st_nlink",
            "st_uid",
            "st_gid",
            "st_rdev",
            "st_size",
            "st_atime_ns",
            "st_mtime_ns",
            "st_ctime_ns",
        ):
            setattr(a, k, getattr(st, k))
        a.st_ino = ino
        a.st_blksize, a.st_blocks = st.st_blksize, st.st_blocks
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    def _real(self, ino: int) -> str:
        return os.path.join(self.branches[self.top[ino]], self.paths[ino])

    async def lookup(self, parent_inode, name, ctx=None):
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        f = self._find(path)
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(f[1], self._ino(path, f[0]))

    async def getattr(self, inode, ctx=None):
        return self._attr(os.lstat(self._real(inode)), inode)

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def forget(self, inode_list):
        pass

    async def open(self, inode, flags, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def opendir(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def _copy_up(self, ino: int) -> None:
        src = self._real(ino)
        dst = os.path.join(self.branches[0], self.paths[ino])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            n = os.fstat(fi.fileno()).st_size
            while n > 0:
                n -= os.copy_file_range(fi.fileno(), fo.fileno(), n) or n
        self.top[ino] = 0

    def _fd(self, fh: int, writing: bool) -> int:
        ino = -fh
        have = self.fds.get(ino)
        if have is not None and (have[1] or not writing):
            return have[0]
        if writing and self.top[ino] != 0:
            self._copy_up(ino)
        if have is not None:
            os.close(have[0])
        up = self.top[ino] == 0
        fd = os.open(self._real(ino), os.O_RDWR if up else os.O_RDONLY)
        self.fds[ino] = (fd, up)
        return fd

    async def read(self, fh, off, size):
        return os.pread(self._fd(fh, False) if fh < 0 else fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(self._fd(fh, True) if fh < 0 else fh, buf, off)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if self.top[inode] != 0:
            self._copy_up(inode)
        path = self._real(inode)
        if fields.update_size:
            os.truncate(path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat_mod.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(
                path,
                ns=(
                    attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                    attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                ),
            )
        return await self.getattr(inode)

    async def readdir(self, fh, start_id, token):
        ino = -fh
        path = self.paths[ino]
        names: dict[str, int] = {}
        for i, b in enumerate(self.branches):
            try:
                for n in os.listdir(os.path.join(b, path)):
                    names.setdefault(n, i)
            except FileNotFoundError:
                continue
        entries = sorted(names.items())
        for k in range(start_id, len(entries)):
            n, i = entries[k]
            p = os.path.join(path, n)
            st = os.lstat(os.path.join(self.branches[i], p))
            if not pyfuse3.readdir_reply(
                token, os.fsencode(n), self._attr(st, self._ino(p, i)), k + 1
            ):
                return

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        real = os.path.join(self.branches[0], path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        os.mknod(real, mode, rdev)
        return self._attr(os.lstat(real), self._ino(path, 0))

    async def create(self, parent_inode, name, mode, flags, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # as stackfs: MKNOD, then no OPEN/RELEASE

    async def release(self, fh):
        if fh > 0:
            os.close(fh)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        real = os.path.join(self.branches[0], path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        os.mkdir(real, mode)
        return self._attr(os.lstat(real), self._ino(path, 0))

    async def unlink(self, parent_inode, name, ctx):
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        os.unlink(os.path.join(self.branches[0], path))
        ino = self.inos.pop(path, None)
        if ino is not None and ino in self.fds:
            os.close(self.fds.pop(ino)[0])

    async def rmdir(self, parent_inode, name, ctx):
        path = os.path.join(self.paths[parent_inode], os.fsdecode(name))
        os.rmdir(os.path.join(self.branches[0], path))
        self.inos.pop(path, None)


def _fuse_errors(fn):
    @functools.wraps(fn)
    async def wrapper(*args):
        try:
            return await fn(*args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    return wrapper


for _name in (
    "mknod",
    "lookup",
    "getattr",
    "setattr",
    "read",
    "write",
    "readdir",
    "create",
    "mkdir",
    "unlink",
    "rmdir",
    "release",
):
    setattr(Floor, _name, _fuse_errors(getattr(Floor, _name)))


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    *branches, mp = argv
    ops = Floor(branches, mp)
    pyfuse3.init(ops, mp, {"fsname=pyfuse3-floor", "default_permissions", "allow_other"})
    try:
        trio.run(functools.partial(pyfuse3.main, min_tasks=4, max_tasks=64))
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
