"""The passthrough backend against a plain directory: the same operations, the same results.

Each comparison test runs one operation sequence (:class:`Recorder`) twice, on a plain directory
and through the mount, and compares every result and every errno. The POSIX and tool tests also
run over the AFS and NFS personalities (their default variants), which extend the same base.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stackfs.linux import libc
from stackfs.runtime import control, lifecycle

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]

#: the POSIX and tool tests run over every personality: AFS and NFS must stay real filesystems
KINDS = ["passthrough", "nfs", "afs"]



class Recorder:
    """Runs operations under ``root`` and records each outcome: a normalised value or errno."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, Any]] = []

    def p(self, rel: str) -> str:
        return str(self.root / rel)

    def __call__(self, label: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            value = fn(*args, **kw)
        except OSError as exc:
            self.log.append((label, ("errno", errno.errorcode.get(exc.errno, exc.errno))))
            return None
        self.log.append((label, _normal(value)))
        return value


def _normal(value: Any) -> Any:
    if isinstance(value, os.stat_result):
        return {
            "type": stat.S_IFMT(value.st_mode),
            "mode": stat.S_IMODE(value.st_mode),
            "nlink": value.st_nlink if not stat.S_ISDIR(value.st_mode) else "dir",
            "uid": value.st_uid,
            "gid": value.st_gid,
            "size": value.st_size if not stat.S_ISDIR(value.st_mode) else "dir",
        }
    return value


def compare(tmp_path: Path, mnt: Path, sequence: Callable[[Recorder], None]) -> list:
    """Run ``sequence`` on a plain directory and under ``mnt``; assert the same outcomes."""
    plain = tmp_path / "plain"
    plain.mkdir(exist_ok=True)
    a, b = Recorder(plain), Recorder(mnt)
    sequence(a)
    sequence(b)
    for (la, va), (lb, vb) in zip(a.log, b.log, strict=True):
        assert la == lb
        assert va == vb, f"{la}: plain directory gave {va!r}, the mount gave {vb!r}"
    return b.log


def _fd_ops(r: Recorder) -> None:
    fd = r("open-creat", os.open, r.p("f"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    r("write", os.write, fd, b"hello world")
    r("pwrite", os.pwrite, fd, b"HELLO", 0)
    r("pread", os.pread, fd, 100, 0)
    r("ftruncate", os.ftruncate, fd, 5)
    r("fstat", os.fstat, fd)
    r("fsync", os.fsync, fd)
    r("fdatasync", os.fdatasync, fd)
    r("close", os.close, fd)
    r("read-back", Path(r.p("f")).read_bytes)
    r("creat-excl-exists", os.open, r.p("f"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fd = r("open-trunc", os.open, r.p("f"), os.O_WRONLY | os.O_TRUNC)
    r("fstat-trunc", os.fstat, fd)
    r("close", os.close, fd)
    fd = r("open-append", os.open, r.p("f"), os.O_WRONLY | os.O_APPEND)
    r("append1", os.write, fd, b"abc")
    r("append2", os.write, fd, b"def")
    r("close", os.close, fd)
    r("appended", Path(r.p("f")).read_bytes)
    # sparse and large
    fd = r("open-sparse", os.open, r.p("sparse"), os.O_RDWR | os.O_CREAT, 0o600)
    r("pwrite-far", os.pwrite, fd, b"x", 3 << 20)
    r("pread-hole", os.pread, fd, 16, 1 << 20)
    r("close", os.close, fd)
    big = bytes(range(256)) * 8192  # 2 MiB
    r("write-big", Path(r.p("big")).write_bytes, big)
    r("big-sha", lambda: hashlib.sha256(Path(r.p("big")).read_bytes()).hexdigest())
    # unlinked but open
    fd = r("open-rw", os.open, r.p("doomed"), os.O_RDWR | os.O_CREAT, 0o600)
    r("write-doomed", os.write, fd, b"still here")
    r("unlink-open", os.unlink, r.p("doomed"))
    r("pread-unlinked", os.pread, fd, 100, 0)
    r("fstat-unlinked-nlink", lambda: os.fstat(fd).st_nlink)
    r("close", os.close, fd)
    r("stat-unlinked", os.stat, r.p("doomed"))
    # O_DIRECTORY / O_NOFOLLOW
    os.symlink("f", r.p("lnk"))
    r("open-nofollow-link", os.open, r.p("lnk"), os.O_RDONLY | os.O_NOFOLLOW)
    r("open-dir-on-file", os.open, r.p("f"), os.O_RDONLY | os.O_DIRECTORY)
    r("open-missing", os.open, r.p("missing"), os.O_RDONLY)


@pytest.mark.parametrize("kind", KINDS)
def test_file_io_matches_plain_directory(mount_backend, tmp_path, kind):
    m = mount_backend(kind)
    compare(tmp_path, m.mountpoint, _fd_ops)


def _attr_ops(r: Recorder) -> None:
    Path(r.p("f")).write_bytes(b"0123456789")
    r("truncate-path", os.truncate, r.p("f"), 3)
    r("stat", os.stat, r.p("f"))
    r("chmod", os.chmod, r.p("f"), 0o4751)
    r("stat-mode", os.stat, r.p("f"))
    r("chown", os.chown, r.p("f"), 1234, 5678)
    r("stat-owner", os.stat, r.p("f"))
    r("utime-ns", os.utime, r.p("f"), ns=(1_000_000_123, 2_000_000_456))
    r("mtime-ns", lambda: os.stat(r.p("f")).st_mtime_ns)
    r("atime-ns", lambda: os.stat(r.p("f")).st_atime_ns)
    r("utime-mtime-only", os.utime, r.p("f"), ns=(5_000_000_000, 7_000_000_007))
    r("mtime-ns-2", lambda: os.stat(r.p("f")).st_mtime_ns)
    os.symlink("f", r.p("s"))
    r("lchown", os.chown, r.p("s"), 42, 43, follow_symlinks=False)
    r("lstat-link", os.lstat, r.p("s"))
    r("lutime", os.utime, r.p("s"), ns=(3_000_000_000, 4_000_000_004), follow_symlinks=False)
    r("link-mtime", lambda: os.lstat(r.p("s")).st_mtime_ns)
    r("target-mtime-unchanged", lambda: os.stat(r.p("f")).st_mtime_ns)
    r("chmod-missing", os.chmod, r.p("nope"), 0o600)
    r("access", os.access, r.p("f"), os.R_OK)


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_match_plain_directory(mount_backend, tmp_path, kind):
    m = mount_backend(kind)
    compare(tmp_path, m.mountpoint, _attr_ops)


def _namespace_ops(r: Recorder) -> None:
    r("mkdir", os.mkdir, r.p("d"), 0o750)
    r("mkdir-exists", os.mkdir, r.p("d"))
    r("mkdir-missing-parent", os.mkdir, r.p("x/y"))
    r("stat-d", os.stat, r.p("d"))
    Path(r.p("d/f")).write_text("f")
    r("rmdir-notempty", os.rmdir, r.p("d"))
    r("rmdir-missing", os.rmdir, r.p("nodir"))
    r("rmdir-file", os.rmdir, r.p("d/f"))
    r("unlink-dir", os.unlink, r.p("d"))
    r("unlink-missing", os.unlink, r.p("nofile"))
    long = "n" * 256
    r("creat-too-long", os.open, r.p(long), os.O_CREAT | os.O_WRONLY, 0o600)
    r("mkdir-too-long", os.mkdir, r.p(long))
    r("stat-too-long", os.stat, r.p(long))
    r("ok-255", lambda: Path(r.p("m" * 255)).write_text("max"))
    r("stat-255", os.stat, r.p("m" * 255))
    r("symlink", os.symlink, "d/f", r.p("sl"))
    r("symlink-exists", os.symlink, "x", r.p("sl"))
    r("readlink", os.readlink, r.p("sl"))
    r("readlink-notlink", os.readlink, r.p("d"))
    r("read-through-link", Path(r.p("sl")).read_text)
    r("link", os.link, r.p("d/f"), r.p("hard"))
    r("nlink", lambda: os.stat(r.p("d/f")).st_nlink)
    r("link-exists", os.link, r.p("d/f"), r.p("hard"))
    r("link-dir", os.link, r.p("d"), r.p("dlink"))
    r("unlink-hard", os.unlink, r.p("hard"))
    r("nlink-after", lambda: os.stat(r.p("d/f")).st_nlink)
    r("mkfifo", os.mkfifo, r.p("fifo"), 0o600)
    r("stat-fifo", os.lstat, r.p("fifo"))
    r("mknod-reg", os.mknod, r.p("node"), stat.S_IFREG | 0o644)
    r("stat-node", os.lstat, r.p("node"))
    r("listdir", lambda: sorted(os.listdir(r.p("."))))
    r("listdir-d", lambda: sorted(os.listdir(r.p("d"))))
    r("listdir-missing", os.listdir, r.p("nodir"))
    r("listdir-file", os.listdir, r.p("d/f"))


@pytest.mark.parametrize("kind", KINDS)
def test_namespace_matches_plain_directory(mount_backend, tmp_path, kind):
    m = mount_backend(kind)
    compare(tmp_path, m.mountpoint, _namespace_ops)


def _rename_ops(r: Recorder) -> None:
    for name, data in (("a", "A"), ("b", "B"), ("c", "C")):
        Path(r.p(name)).write_text(data)
    os.mkdir(r.p("d1"))
    os.mkdir(r.p("d2"))
    Path(r.p("d2/inside")).write_text("i")
    os.mkdir(r.p("d3"))
    r("rename", os.rename, r.p("a"), r.p("a2"))
    r("rename-over", os.rename, r.p("a2"), r.p("b"))
    r("b-content", Path(r.p("b")).read_text)
    r("rename-missing", os.rename, r.p("a"), r.p("z"))
    r("noreplace", libc.renameat2, libc.AT_FDCWD, r.p("b").encode(),
      libc.AT_FDCWD, r.p("c").encode(), libc.RENAME_NOREPLACE)
    r("noreplace-ok", libc.renameat2, libc.AT_FDCWD, r.p("b").encode(),
      libc.AT_FDCWD, r.p("b2").encode(), libc.RENAME_NOREPLACE)
    r("exchange", libc.renameat2, libc.AT_FDCWD, r.p("b2").encode(),
      libc.AT_FDCWD, r.p("c").encode(), libc.RENAME_EXCHANGE)
    r("after-exchange", lambda: (Path(r.p("b2")).read_text(), Path(r.p("c")).read_text()))
    r("exchange-missing", libc.renameat2, libc.AT_FDCWD, r.p("c").encode(),
      libc.AT_FDCWD, r.p("zz").encode(), libc.RENAME_EXCHANGE)
    r("exchange-dir-file", libc.renameat2, libc.AT_FDCWD, r.p("d1").encode(),
      libc.AT_FDCWD, r.p("c").encode(), libc.RENAME_EXCHANGE)
    r("types-after", lambda: (os.path.isfile(r.p("d1")), os.path.isdir(r.p("c"))))
    r("dir-over-nonempty", os.rename, r.p("d3"), r.p("d2"))
    r("dir-over-file", os.rename, r.p("d2"), r.p("b2"))
    r("file-over-dir", os.rename, r.p("b2"), r.p("d3"))
    r("dir-into-itself", os.rename, r.p("d2"), r.p("d2/sub"))
    r("dir-over-empty", os.rename, r.p("d2"), r.p("d3"))
    r("moved-content", Path(r.p("d3/inside")).read_text)
    r("old-gone", os.stat, r.p("d2"))
    r("listdir", lambda: sorted(os.listdir(r.p("."))))


@pytest.mark.parametrize("kind", KINDS)
def test_rename_matches_plain_directory(mount_backend, tmp_path, kind):
    m = mount_backend(kind)
    compare(tmp_path, m.mountpoint, _rename_ops)


def _xattr_ops(r: Recorder) -> None:
    Path(r.p("f")).write_text("x")
    os.mkdir(r.p("d"))
    r("set", os.setxattr, r.p("f"), "user.one", b"1")
    r("get", os.getxattr, r.p("f"), "user.one")
    r("set-empty", os.setxattr, r.p("f"), "user.empty", b"")
    r("get-empty", os.getxattr, r.p("f"), "user.empty")
    r("get-missing", os.getxattr, r.p("f"), "user.missing")
    r("create-exists", os.setxattr, r.p("f"), "user.one", b"2", os.XATTR_CREATE)
    r("replace-missing", os.setxattr, r.p("f"), "user.two", b"2", os.XATTR_REPLACE)
    r("replace", os.setxattr, r.p("f"), "user.one", b"3", os.XATTR_REPLACE)
    r("list", lambda: sorted(os.listxattr(r.p("f"))))
    r("remove", os.removexattr, r.p("f"), "user.one")
    r("remove-missing", os.removexattr, r.p("f"), "user.one")
    r("list-after", lambda: sorted(os.listxattr(r.p("f"))))
    r("dir-set", os.setxattr, r.p("d"), "user.d", b"dir")
    r("dir-get", os.getxattr, r.p("d"), "user.d")
    r("big-value", os.setxattr, r.p("f"), "user.big", b"v" * 3000)
    r("big-get", lambda: len(os.getxattr(r.p("f"), "user.big")))
    r("bad-namespace", os.setxattr, r.p("f"), "bogus.x", b"1")
    r("missing-file", os.getxattr, r.p("nofile"), "user.x")


@pytest.mark.parametrize("kind", KINDS)
def test_xattrs_match_plain_directory(mount_backend, tmp_path, kind):
    m = mount_backend(kind)
    compare(tmp_path, m.mountpoint, _xattr_ops)


def test_rename_across_mounts_is_exdev(mount_backend):
    a = mount_backend("passthrough", name="a")
    b = mount_backend("passthrough", name="b")
    (a.mountpoint / "f").write_text("x")
    (a.mountpoint / "d").mkdir()
    with pytest.raises(OSError) as exc:
        os.rename(a.mountpoint / "f", b.mountpoint / "f")
    assert exc.value.errno == errno.EXDEV
    with pytest.raises(OSError) as exc:
        os.link(a.mountpoint / "f", b.mountpoint / "f")
    assert exc.value.errno == errno.EXDEV
    # mv falls back to copy + unlink across filesystems
    subprocess.run(["mv", str(a.mountpoint / "d"), str(b.mountpoint / "d")], check=True)
    assert (b.mountpoint / "d").is_dir() and not (a.mountpoint / "d").exists()


def test_created_objects_belong_to_the_caller(mount_backend):
    m = mount_backend("passthrough")
    pub = m.mountpoint / "pub"
    pub.mkdir()
    os.chmod(pub, 0o1777)
    sgid = m.mountpoint / "sgid"
    sgid.mkdir()
    os.chown(sgid, 0, 4242)
    os.chmod(sgid, 0o2777)
    # relative paths from a cwd set while still root: /tmp/pytest-of-root is not searchable
    script = (
        "import os; os.umask(0o027);"
        "open('pub/f', 'w').close(); os.mkdir('pub/d'); os.symlink('f', 'pub/s');"
        "os.mkfifo('pub/p'); open('sgid/g', 'w').close(); os.mkdir('sgid/gd')"
    )
    subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", script],
        check=True, cwd=m.mountpoint,
    )
    store = m.store
    for name, mode in (("f", 0o640), ("d", 0o750), ("p", 0o640)):
        st = os.lstat(store / "pub" / name)
        assert (st.st_uid, st.st_gid) == (65534, 65534), name
        assert stat.S_IMODE(st.st_mode) == mode, name
    st = os.lstat(store / "pub" / "s")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert os.stat(store / "sgid" / "g").st_gid == 4242
    gd = os.stat(store / "sgid" / "gd")
    assert gd.st_gid == 4242 and gd.st_mode & stat.S_ISGID
    # and the permission checks are the kernel's (default_permissions)
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "sh", "-c", "echo x > rootonly"],
        capture_output=True, cwd=m.mountpoint,
    )
    assert res.returncode != 0 and b"Permission denied" in res.stderr


def test_readdir_offsets_stable_while_directory_changes(mount_backend):
    m = mount_backend("passthrough")
    d = m.mountpoint / "many"
    d.mkdir()
    names = [f"f{i:04d}" for i in range(600)]
    for n in names:
        (d / n).write_bytes(b"")
    seen: list[str] = []
    removed, added = set(), set()
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 50:  # change the directory in the middle of the listing
                for n in names[300:400]:
                    os.unlink(d / n)
                    removed.add(n)
                for j in range(100):
                    (d / f"new{j}").write_bytes(b"")
                    added.add(f"new{j}")
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    untouched = set(names) - removed
    assert untouched <= set(seen), "an entry that was never touched was skipped"
    assert set(seen) <= set(names) | added
    # a fresh listing (rewind) sees the new state
    assert set(os.listdir(d)) == untouched | added
    # seekdir/telldir through Python's fd listing: two listings of one fd agree
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(fd)) == sorted(os.listdir(fd))
    finally:
        os.close(fd)


def test_forget_drops_inodes(mount_backend):
    m = mount_backend("passthrough")

    def inodes() -> int:
        return m.control({"op": "state"})["daemon"]["inodes"]

    base = inodes()
    d = m.mountpoint / "tmp"
    d.mkdir()
    for i in range(300):
        (d / str(i)).write_bytes(b"x")
    assert inodes() >= base + 300
    shutil.rmtree(d)
    deadline = time.monotonic() + 5
    while inodes() > base + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inodes() <= base + 5


def test_inode_table_follows_renames(mount_backend):
    """A renamed directory's children keep their inode and get the new path (the lock
    description in the state shows it)."""
    m = mount_backend("passthrough")
    (m.mountpoint / "d").mkdir()
    f = m.mountpoint / "d" / "f"
    f.write_text("x")
    ino = os.stat(f).st_ino
    os.rename(m.mountpoint / "d", m.mountpoint / "e")
    g = m.mountpoint / "e" / "f"
    assert os.stat(g).st_ino == ino
    os.setxattr(g, "trusted.stackfs.i_rwsem", b"read")
    try:
        locks = m.control({"op": "state"})["locks"]
        assert [lk["desc"] for lk in locks] == [f"/e/f (ino {ino})"]
        assert locks[0]["holders"][0]["task"]["pid"] == os.getpid() or locks[0]["holders"]
        assert "trusted.stackfs.i_rwsem" not in os.listxattr(g)
        with pytest.raises(OSError) as exc:
            os.getxattr(g, "trusted.stackfs.i_rwsem")
        assert exc.value.errno == errno.ENODATA
    finally:
        os.removexattr(g, "trusted.stackfs.i_rwsem")
    assert m.control({"op": "state"})["locks"] == []
    assert not any(n.startswith("trusted.stackfs") for n in os.listxattr(m.store / "e" / "f"))


def test_server_change_is_seen(mount_backend):
    m = mount_backend("passthrough", "-o", "entry_timeout=60,attr_timeout=60")
    f = m.mountpoint / "f"
    f.write_text("old")
    assert f.read_text() == "old"
    reply = control.query(m.mountpoint, {"op": "server", "action": "write",
                                         "args": ["f", "new data"]})
    assert "write /f" in reply["message"]
    assert f.read_text() == "new data"
    control.query(m.mountpoint, {"op": "server", "action": "rename", "args": ["f", "g"]})
    assert not f.exists() and (m.mountpoint / "g").read_text() == "new data"
    control.query(m.mountpoint, {"op": "server", "action": "mkdir", "args": ["sub"]})
    assert (m.mountpoint / "sub").is_dir()
    with pytest.raises(control.ControlError, match="unknown server action"):
        control.query(m.mountpoint, {"op": "server", "action": "chmod", "args": ["g"]})
    with pytest.raises(control.ControlError):
        control.query(m.mountpoint, {"op": "server", "action": "unlink", "args": ["nope"]})


# -- real tools ------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, Any]:
    """Everything a tool should reproduce: types, modes, contents, link targets, mtimes."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                            hashlib.sha256(p.read_bytes()).hexdigest(), st.st_nlink)
    return out


def _sample_tree(root: Path) -> None:
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("alpha\n" * 100)
    (root / "src" / "deep" / "b.bin").write_bytes(hashlib.sha512(b"seed").digest() * 5000)
    (root / "src" / "deep" / "er" / "c").write_text("c")
    os.chmod(root / "src" / "deep" / "er" / "c", 0o751)
    os.symlink("../a.txt", root / "src" / "deep" / "rel-link")
    os.link(root / "src" / "a.txt", root / "src" / "hard.txt")
    for i, f in enumerate(("a.txt", "deep/b.bin", "deep/er/c")):
        t = 1_500_000_000_111_111_111 + i
        os.utime(root / "src" / f, ns=(t, t + 111_111_111))


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("tool", ["cp", "tar", "rsync", "mv"])
@pytest.mark.parametrize("kind", KINDS)
def test_tools_copy_trees_like_on_a_plain_directory(mount_backend, tmp_path, tool, kind):
    _need(tool)
    m = mount_backend(kind)
    results = {}
    for where in (tmp_path / "plain", m.mountpoint):
        where.mkdir(exist_ok=True)
        _sample_tree(where)
        src, dst = where / "src", where / "dst"
        if tool == "cp":
            cmd = ["cp", "-a", str(src), str(dst)]
        elif tool == "tar":
            cmd = ["sh", "-c", f"mkdir {dst} && tar -C {src} -cf - . | tar -C {dst} -xpf -"]
        elif tool == "rsync":
            cmd = ["rsync", "-aH", f"{src}/", f"{dst}/"]
        else:
            cmd = ["mv", str(src), str(dst)]
        subprocess.run(cmd, check=True, capture_output=True)
        results[where] = _tree(where)
    plain, mounted = results.values()
    assert plain == mounted
    if tool == "cp":
        assert mounted["dst/deep/b.bin"] == mounted["src/deep/b.bin"]


@pytest.mark.parametrize("kind", KINDS)
def test_git_works_through_the_mount(mount_backend, kind):
    _need("git")
    m = mount_backend(kind)
    repo = m.mountpoint / "repo"
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@x", GIT_CONFIG_NOSYSTEM="1", HOME=str(m.mountpoint))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                              capture_output=True, text=True).stdout

    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    for i in range(20):
        (repo / f"file{i}.txt").write_text(f"content {i}\n")
    git("add", ".")
    git("commit", "-qm", "first")
    (repo / "file3.txt").write_text("changed\n")
    git("mv", "file4.txt", "moved.txt")
    git("commit", "-qam", "second")
    git("gc", "-q")
    assert git("status", "--porcelain") == ""
    assert len(git("log", "--oneline").splitlines()) == 2
    git("fsck", "--strict")
    clone = m.mountpoint / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env)
    assert (clone / "moved.txt").read_text() == "content 4\n"


# -- the command line ------------------------------------------------------------------------------


def _stackfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lifecycle.stackfs_argv(*args), capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch", "--store", "{store}", "{mp}"], "unknown backend 'nosuch'"),
        (["passthrough", "--variant", "bogus", "--store", "{store}", "{mp}"],
         "unknown variant 'bogus'"),
        (["passthrough", "--store", "{store}/missing", "{mp}"], "not a directory"),
        (["passthrough", "--store", "{store}", "{store}/file"], "not a directory"),
        (["passthrough", "--store", "{store}", "-o", "entry_timeout=x", "{mp}"],
         "entry_timeout: bad value 'x'"),
        # non-finite and negative numbers: float() takes them, the daemon then died on a request
        (["passthrough", "--store", "{store}", "-o", "entry_timeout=inf", "{mp}"],
         "entry_timeout: bad value 'inf'"),
        (["passthrough", "--store", "{store}", "-o", "attr_timeout=1e400", "{mp}"],
         "attr_timeout: bad value '1e400'"),
        (["nfs", "--store", "{store}", "-o", "acregmin=nan", "{mp}"], "acregmin: bad value 'nan'"),
        (["passthrough", "--store", "{store}", "-o", "entry_timeout=-1", "{mp}"],
         "entry_timeout: bad value '-1'"),
        (["passthrough", "--store", "{store}", "-o", "inject=nope=delay:1", "{mp}"],
         "unknown injection point 'nope'"),
    ],
)
def test_cli_errors_are_one_line_and_mount_nothing(tmp_path, argv, message):
    store, mp = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mp.mkdir()
    (store / "file").write_text("")
    args = [a.format(store=store, mp=mp) for a in argv]
    res = _stackfs("backend", "mount", *args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not os.path.ismount(mp)


def test_cli_mount_returns_when_live(tmp_path):
    store, mp = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mp.mkdir()
    (store / "hello").write_text("hi")
    res = _stackfs("backend", "mount", "passthrough", "--store", str(store), str(mp))
    try:
        assert res.returncode == 0, res.stderr
        assert (mp / "hello").read_text() == "hi"  # live as soon as the command returned
        m = lifecycle.adopt(mp)
        assert m.kind == "passthrough"
        again = _stackfs("backend", "mount", "passthrough", "--store", str(store), str(mp))
        assert again.returncode != 0 and "already a testbed mount" in again.stderr
    finally:
        if os.path.ismount(mp):
            lifecycle.unmount(lifecycle.adopt(mp))
    assert not os.path.ismount(mp)
    res = _stackfs("backend", "list")
    assert res.returncode == 0 and "passthrough" in res.stdout
