"""The Python floor of ``union_bench.py``: the least a pyfuse3 filesystem can do for the
benchmark's requests.

A bare pyfuse3 passthrough over the same branches (upper first), with the same kernel fast
paths as stackfs' defaults (ENOSYS to OPEN, OPENDIR and CREATE, the kernel's readdir cache,
I/O by inode through the patched pyfuse3, the same readahead), so the kernel sends it the
same requests.

It does the least Python work per request: no whiteouts, no inode-number scheme, no in-flight
tracking, no locks, no wrapper around the handlers. An inode is ``[path, layers]`` (the path
relative to every branch root, the branches that hold it, top first); every syscall is an
``*at()`` call on a branch root fd. A lookup stats the name in the parent's layers only (a
file ends the search), a listing is one ``listdir`` per layer, kept for the stream's later
READDIRPLUS chunks, and each entry one ``fstatat`` on a directory fd. A write copies the file up
with one ``copy_file_range`` loop. It is correct only for what the benchmark does (read, stat,
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
from stackfs.runtime import mountinfo
from stackfs.runtime.fuseattr import entry_attributes  # noqa: E402

TIMEOUT = 5.0  # the union's default entry/attr timeout
FUSEError = pyfuse3.FUSEError
readdir_reply = pyfuse3.readdir_reply
_lstat = os.lstat


def _attr(st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
    return entry_attributes(st, ino, TIMEOUT, TIMEOUT)


class Floor(pyfuse3.Operations):
    enable_writeback_cache = False  # as stackfs' default
    enable_inode_handles = True  # the patched pyfuse3: fh -INODE without OPEN
    enable_atomic_o_trunc = False

    def __init__(self, branches: list[str], mountpoint: str) -> None:
        super().__init__()
        self.roots = [os.open(b, os.O_RDONLY | os.O_DIRECTORY) for b in branches]
        self.tops = [os.fsencode(os.path.abspath(b)) for b in branches]
        self.mountpoint = os.path.abspath(mountpoint)
        #: ino -> [path relative to the branch roots, layers (branch indexes, top first)]
        self.inodes: dict[int, list] = {pyfuse3.ROOT_INODE: [b".", tuple(range(len(branches)))]}
        self.inos: dict[bytes, int] = {b".": pyfuse3.ROOT_INODE}
        self.fds: dict[int, tuple[int, bool]] = {}
        #: ino -> the merged listing of the directory stream being read: [(name, branch)]
        self.listings: dict[int, list[tuple[bytes, int]]] = {}
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

    def _ino(self, path: bytes, layers: tuple[int, ...]) -> int:
        ino = self.inos.get(path)
        if ino is None:
            ino = self.inos[path] = self.next_ino
            self.next_ino += 1
            self.inodes[ino] = [path, layers]
        else:
            self.inodes[ino][1] = layers
        return ino

    @staticmethod
    def _join(parent: bytes, name: bytes) -> bytes:
        return name if parent == b"." else parent + b"/" + name

    async def lookup(self, parent_inode, name, ctx=None):
        ppath, players = self.inodes[parent_inode]
        path = self._join(ppath, name)
        roots = self.roots
        top = None
        layers: list[int] = []
        for bi in players:
            try:
                st = _lstat(path, dir_fd=roots[bi])
            except FileNotFoundError:
                continue
            except OSError as e:
                raise FUSEError(e.errno) from None
            if top is None:
                top = st
            layers.append(bi)
            if not stat_mod.S_ISDIR(st.st_mode):
                break
        if top is None:
            raise FUSEError(errno.ENOENT)
        return _attr(top, self._ino(path, tuple(layers)))

    async def getattr(self, inode, ctx=None):
        path, layers = self.inodes[inode]
        try:
            return _attr(_lstat(path, dir_fd=self.roots[layers[0]]), inode)
        except OSError as e:
            raise FUSEError(e.errno) from None

    async def getxattr(self, inode, name, ctx):
        # passed through, as a passthrough must (the kernel asks for security.capability
        # before every write): one lgetxattr on the object's top branch
        path, layers = self.inodes[inode]
        try:
            return os.getxattr(self.tops[layers[0]] + b"/" + path, name, follow_symlinks=False)
        except OSError as e:
            raise FUSEError(pyfuse3.ENOATTR if e.errno == errno.ENODATA else e.errno) from None

    async def forget(self, inode_list):
        pass

    async def open(self, inode, flags, ctx):
        raise FUSEError(errno.ENOSYS)

    async def opendir(self, inode, ctx):
        raise FUSEError(errno.ENOSYS)

    async def create(self, parent_inode, name, mode, flags, ctx):
        raise FUSEError(errno.ENOSYS)  # as stackfs: MKNOD, then no OPEN/RELEASE

    def _copy_up(self, ino: int) -> None:
        path, layers = self.inodes[ino]
        fi = os.open(path, os.O_RDONLY, dir_fd=self.roots[layers[0]])
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            try:
                fo = os.open(path, flags, 0o644, dir_fd=self.roots[0])
            except FileNotFoundError:  # the parent directory is not in the upper branch yet
                os.makedirs(os.path.dirname(self.tops[0] + b"/" + path), exist_ok=True)
                fo = os.open(path, flags, 0o644, dir_fd=self.roots[0])
            try:
                n = os.fstat(fi).st_size
                while n > 0:
                    n -= os.copy_file_range(fi, fo, n) or n
            finally:
                os.close(fo)
        finally:
            os.close(fi)
        self.inodes[ino][1] = (0,)

    def _fd(self, fh: int, writing: bool) -> int:
        ino = -fh
        have = self.fds.get(ino)
        if have is not None and (have[1] or not writing):
            return have[0]
        path, layers = self.inodes[ino]
        if writing and layers[0] != 0:
            self._copy_up(ino)
            layers = (0,)
        if have is not None:
            os.close(have[0])
        up = layers[0] == 0
        fd = os.open(path, os.O_RDWR if up else os.O_RDONLY, dir_fd=self.roots[layers[0]])
        self.fds[ino] = (fd, up)
        return fd

    async def read(self, fh, off, size):
        try:
            return os.pread(self._fd(fh, False) if fh < 0 else fh, size, off)
        except OSError as e:
            raise FUSEError(e.errno) from None

    async def write(self, fh, off, buf):
        try:
            return os.pwrite(self._fd(fh, True) if fh < 0 else fh, buf, off)
        except OSError as e:
            raise FUSEError(e.errno) from None

    async def setattr(self, inode, attr, fields, fh, ctx):
        try:
            if self.inodes[inode][1][0] != 0:
                self._copy_up(inode)
            path = self.inodes[inode][0]
            root = self.roots[0]
            if fields.update_size:
                fd = os.open(path, os.O_WRONLY, dir_fd=root)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
            if fields.update_mode:
                os.chmod(path, stat_mod.S_IMODE(attr.st_mode), dir_fd=root)
            if fields.update_atime or fields.update_mtime:
                st = _lstat(path, dir_fd=root)
                os.utime(
                    path,
                    ns=(
                        attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                        attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                    ),
                    dir_fd=root,
                )
            return _attr(_lstat(path, dir_fd=root), inode)
        except OSError as e:
            raise FUSEError(e.errno) from None

    def _merge(self, path: bytes, layers: tuple[int, ...]) -> list[tuple[bytes, int]]:
        names: dict[bytes, int] = {}
        for bi in layers:
            for n in os.listdir(self.tops[bi] + b"/" + path):
                names.setdefault(n, bi)
        return list(names.items())

    async def readdir(self, fh, start_id, token):
        ino = -fh
        path, layers = self.inodes[ino]
        try:
            entries = self.listings.get(ino) if start_id else None
            if entries is None:
                entries = self.listings[ino] = self._merge(path, layers)
            dfds = {
                bi: os.open(path, os.O_PATH | os.O_DIRECTORY, dir_fd=self.roots[bi])
                for bi in layers
            }
        except OSError as e:
            raise FUSEError(e.errno) from None
        inos, inodes, join = self.inos, self.inodes, self._join
        try:
            for k in range(start_id, len(entries)):
                n, bi = entries[k]
                st = _lstat(n, dir_fd=dfds[bi])
                p = join(path, n)
                i = inos.get(p)
                if i is None:
                    i = inos[p] = self.next_ino
                    self.next_ino += 1
                    inodes[i] = [p, (bi,)]
                if not readdir_reply(token, n, _attr(st, i), k + 1):
                    return
        finally:
            for fd in dfds.values():
                os.close(fd)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        path = self._join(self.inodes[parent_inode][0], name)
        root = self.roots[0]
        try:
            os.mknod(path, mode, rdev, dir_fd=root)
            return _attr(_lstat(path, dir_fd=root), self._ino(path, (0,)))
        except OSError as e:
            raise FUSEError(e.errno) from None

    async def release(self, fh):
        if fh > 0:
            os.close(fh)

    async def mkdir(self, parent_inode, name, mode, ctx):
        ppath, players = self.inodes[parent_inode]
        path = self._join(ppath, name)
        root = self.roots[0]
        try:
            if players[0] != 0:
                os.makedirs(self.tops[0] + b"/" + ppath, exist_ok=True)
            os.mkdir(path, mode, dir_fd=root)
            return _attr(_lstat(path, dir_fd=root), self._ino(path, (0,)))
        except OSError as e:
            raise FUSEError(e.errno) from None

    async def unlink(self, parent_inode, name, ctx):
        path = self._join(self.inodes[parent_inode][0], name)
        try:
            os.unlink(path, dir_fd=self.roots[0])
        except OSError as e:
            raise FUSEError(e.errno) from None
        ino = self.inos.pop(path, None)
        if ino is not None:
            self.inodes.pop(ino, None)
            have = self.fds.pop(ino, None)
            if have is not None:
                os.close(have[0])

    async def rmdir(self, parent_inode, name, ctx):
        path = self._join(self.inodes[parent_inode][0], name)
        try:
            os.rmdir(path, dir_fd=self.roots[0])
        except OSError as e:
            raise FUSEError(e.errno) from None
        ino = self.inos.pop(path, None)
        if ino is not None:
            self.inodes.pop(ino, None)


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
