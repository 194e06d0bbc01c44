"""Hard links and renames never lose a name (issue 9): the pjdfstest-style sequences, each step
its own process, for every file type; renames of hard links round in a circle; links to the
deepest path; st_nlink and st_ctime of the other names after unlink; in the upper branch and in
a lower one (pseudo-links), and across a remount."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time

import pytest

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120)]

TYPES = ("regular", "fifo", "block", "char", "socket")


def run(cwd, *argv: str) -> str:
    """One step, in a process of its own (as pjdfstest runs them)."""
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, f"{argv}: {p.stderr.strip()}"
    return p.stdout.strip()


def lstat_or_errno(path) -> tuple | str:
    """(type, mode, nlink, uid, gid) read by a new process (stat(1)), or the errno name."""
    p = subprocess.run(["stat", "-c", "%f %a %h %u %g", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        assert "No such file" in p.stderr, p.stderr
        return "ENOENT"
    raw, mode, nlink, uid, gid = p.stdout.split()
    return (stat.S_IFMT(int(raw, 16)), oct(int(mode, 8)), int(nlink), int(uid), int(gid))


def make(path, kind: str) -> int:
    if kind == "regular":
        path.write_bytes(b"")
        return stat.S_IFREG
    if kind == "fifo":
        os.mkfifo(path, 0o644)
        return stat.S_IFIFO
    if kind == "block":
        os.mknod(path, stat.S_IFBLK | 0o644, os.makedev(7, 200))
        return stat.S_IFBLK
    if kind == "char":
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
        return stat.S_IFCHR
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    os.chmod(path, 0o644)
    return stat.S_IFSOCK


@pytest.mark.parametrize("where", ["upper", "lower"])
def test_surviving_link_keeps_its_name_each_step_a_process(union, where):
    """link/00.t: a, link a b, link b c, chmod b, chown b, unlink a, unlink c: b survives."""
    u = union
    if where == "lower":
        for kind in TYPES:
            d = u.l2 / "n3" / kind
            d.mkdir(parents=True)
            make(d / "a", kind)
    else:
        (u.upper / "n3").mkdir()
    u.mount()  # the defaults: the kernel caches entries and attributes
    for kind in TYPES:
        d = u.m("n3", kind)
        if where == "upper":
            d.mkdir()
            fmt = make(d / "a", kind)
        else:
            fmt = stat.S_IFMT(os.lstat(d / "a").st_mode)
        run(d, "ln", "a", "b")
        assert lstat_or_errno(d / "a")[2] == 2
        run(d, "ln", "b", "c")
        for n in "abc":
            assert lstat_or_errno(d / n)[:3] == (fmt, "0o644", 3)
        run(d, "chmod", "0201", "b")
        run(d, "chown", "-h", "65534:65533", "b")
        for n in "abc":
            assert lstat_or_errno(d / n) == (fmt, "0o201", 3, 65534, 65533)
        run(d, "rm", "a")
        assert lstat_or_errno(d / "a") == "ENOENT"
        assert lstat_or_errno(d / "b") == (fmt, "0o201", 2, 65534, 65533)
        run(d, "rm", "c")
        assert lstat_or_errno(d / "b") == (fmt, "0o201", 1, 65534, 65533), kind
        assert lstat_or_errno(d / "c") == "ENOENT"
        run(d, "rm", "b")
        assert lstat_or_errno(d / "b") == "ENOENT"
        assert os.listdir(d) == []


@pytest.mark.parametrize("where", ["upper", "lower"])
def test_unlink_updates_the_other_names_ctime(union, where):
    """unlink/00.t: unlinking one name of a hard link moves the inode's ctime."""
    u = union
    if where == "lower":
        for kind in TYPES:
            make(u.l1 / f"{kind}0", kind)
            os.link(u.l1 / f"{kind}0", u.l1 / f"{kind}1")
    u.mount()
    for kind in TYPES:
        a, b = u.m(f"{kind}0"), u.m(f"{kind}1")
        if where == "upper":
            make(a, kind)
            os.link(a, b)
        before = os.lstat(a)
        assert before.st_nlink == 2
        time.sleep(0.02)  # more than a tick of the coarse clock ctime is taken from
        os.unlink(b)
        after = os.lstat(a)
        assert after.st_nlink == 1, kind
        assert after.st_ctime_ns > before.st_ctime_ns, kind
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)


def _circle(mp, prefix: str, n: int) -> None:
    os.rename(mp / f"{prefix}0", mp / "tmp")
    for i in range(1, n):
        os.rename(mp / f"{prefix}{i}", mp / f"{prefix}{i - 1}")
    os.rename(mp / "tmp", mp / f"{prefix}{n - 1}")


@pytest.mark.parametrize("where", ["upper", "lower"])
def test_renamed_hard_links_never_disappear(union, where):
    """Eight files with a second name each; both name sets renamed round in a circle, over
    names of other hard links too, in one process and step by step in new ones, across a
    remount: every name stays, with nlink 2 and its own data."""
    u = union
    n = 8
    base = u.l1 if where == "lower" else u.upper
    for i in range(n):
        write(base / f"foo{i}", f"data{i}")
        os.link(base / f"foo{i}", base / f"no_foo{i}")
    u.mount()
    mp = u.mp
    expect = {i: i for i in range(n)}  # name index -> data index

    def check() -> None:
        for i in range(n):
            for pre in ("foo", "no_foo"):
                st = os.lstat(mp / f"{pre}{i}")
                assert st.st_nlink == 2, (pre, i)
                assert (mp / f"{pre}{i}").read_text() == f"data{expect[i]}"
            assert os.lstat(mp / f"foo{i}").st_ino == os.lstat(mp / f"no_foo{i}").st_ino

    for _round in range(3):
        _circle(mp, "no_foo", n)
        _circle(mp, "foo", n)
        expect = {i: expect[(i + 1) % n] for i in range(n)}
        check()
    # step by step, each rename its own process
    for pre in ("no_foo", "foo"):
        run(mp, "mv", f"{pre}0", "tmp")
        for i in range(1, n):
            run(mp, "mv", f"{pre}{i}", f"{pre}{i - 1}")
        run(mp, "mv", "tmp", f"{pre}{n - 1}")
    expect = {i: expect[(i + 1) % n] for i in range(n)}
    check()
    # a rename over another hard link's name: that link's other name survives, nlink 1
    os.rename(mp / "foo0", mp / "foo1")
    assert os.lstat(mp / "no_foo1").st_nlink == 1
    assert (mp / "no_foo1").read_text() == f"data{expect[1]}"
    assert os.lstat(mp / "no_foo0").st_nlink == 2
    u.remount()
    assert os.lstat(mp / "no_foo1").st_nlink == 1
    assert os.lstat(mp / "foo1").st_ino == os.lstat(mp / "no_foo0").st_ino
    for i in range(2, n):
        assert os.lstat(mp / f"foo{i}").st_nlink == 2
    names = sorted(os.listdir(mp))
    for name in names:
        os.unlink(mp / name)  # every name is there to be unlinked
    assert os.listdir(mp) == []


def test_link_to_the_deepest_path(union):
    """link/03.t-like: a linked to and from a name of PATH_MAX - 1 bytes; that name unlinked;
    a link one byte longer fails with ENAMETOOLONG; a keeps nlink 1."""
    u = union
    u.mount()
    deep = str(u.mp)
    dirs = []
    while 4095 - len(deep) - 1 > 240:
        deep = os.path.join(deep, "x" * min(200, 4095 - len(deep) - 1 - 101))
        dirs.append(deep)
    for d in dirs:
        os.mkdir(d)
    # the name that makes the path exactly PATH_MAX - 1 bytes long
    last = "y" * (4095 - len(deep) - 1)
    target = os.path.join(deep, last)
    assert len(target) == 4095 and len(last) <= 240
    a = u.m("a")
    a.write_text("a")
    os.link(a, target)
    assert os.lstat(a).st_nlink == 2
    os.unlink(a)
    os.link(target, a)
    os.unlink(target)
    with pytest.raises(OSError) as exc:
        os.link(a, target + "z")
    assert exc.value.errno == 36  # ENAMETOOLONG
    st = os.stat(a)
    assert st.st_nlink == 1
    assert a.read_text() == "a"
    assert lstat_or_errno(a)[2] == 1


@pytest.mark.parametrize("where", ["upper", "lower"])
def test_many_links_and_renames_across_processes_and_a_remount(union, where):
    """Forty files with three names each; names renamed, removed and linked again in rounds,
    half the steps in new processes; nlink, identity and data checked after every round and
    after a remount."""
    u = union
    n = 40
    base = u.l2 if where == "lower" else u.upper
    (base / "d").mkdir()
    for i in range(n):
        write(base / "d" / f"f{i}", f"d{i}")
        os.link(base / "d" / f"f{i}", base / "d" / f"g{i}")
        os.link(base / "d" / f"f{i}", base / "d" / f"h{i}")
    u.mount()
    d = u.m("d")
    names = {i: [f"f{i}", f"g{i}", f"h{i}"] for i in range(n)}

    def check() -> None:
        for i, ns in names.items():
            inos = set()
            for name in ns:
                st = os.lstat(d / name)
                assert st.st_nlink == len(ns), (name, ns)
                assert (d / name).read_text() == f"d{i}"
                inos.add(st.st_ino)
            assert len(inos) == 1
        assert sorted(os.listdir(d)) == sorted(x for ns in names.values() for x in ns)

    for rnd in range(3):
        for i in range(n):
            ns = names[i]
            new = f"r{rnd}_{i}"
            if i % 2:
                run(d, "mv", ns[0], new)
            else:
                os.rename(d / ns[0], d / new)
            ns[0] = new
            if i % 3 == 0 and len(ns) > 1:
                gone = ns.pop()
                if i % 2:
                    run(d, "rm", gone)
                else:
                    os.unlink(d / gone)
            if i % 5 == 0:
                extra = f"l{rnd}_{i}"
                os.link(d / ns[-1], d / extra)
                ns.append(extra)
        check()
    u.remount()
    d = u.m("d")
    check()


@pytest.mark.parametrize("where", ["upper", "lower"])
def test_directory_and_symlink_renames(union, where):
    """rename/00.t-like: populated directories moved (and back), renamed over empty ones (also
    empty in a lower branch), ENOTEMPTY over populated ones; many directories and symlinks
    renamed in rounds keep their inode numbers, contents and targets, across a remount."""
    u = union
    base = u.l1 if where == "lower" else u.upper
    for i in range(20):
        write(base / "src" / f"d{i}" / "sub" / "f", f"f{i}")
        os.symlink(f"target-{i}", base / "src" / f"s{i}")
    (u.l2 / "dst").mkdir()
    for i in range(0, 20, 4):
        (u.l2 / "dst" / f"e{i}").mkdir()  # an empty lower directory to rename over
    u.mount()
    src, dst = u.m("src"), u.m("dst")
    inos = {n: os.lstat(src / n).st_ino for n in os.listdir(src)}
    for rnd in range(3):
        for i in range(20):
            a, b = (src, dst) if rnd % 2 == 0 else (dst, src)
            d_old = f"d{i}" if rnd == 0 else f"d{i}.{rnd - 1}"
            s_old = f"s{i}" if rnd == 0 else f"s{i}.{rnd - 1}"
            if rnd == 0 and i % 4 == 0:
                os.rename(a / d_old, b / f"e{i}")  # over an empty (lower) directory
                os.rename(b / f"e{i}", b / f"d{i}.{rnd}")
            else:
                os.rename(a / d_old, b / f"d{i}.{rnd}")
            os.rename(a / s_old, b / f"s{i}.{rnd}")
        where_now = dst if rnd % 2 == 0 else src
        for i in range(20):
            assert (where_now / f"d{i}.{rnd}" / "sub" / "f").read_text() == f"f{i}"
            assert os.lstat(where_now / f"d{i}.{rnd}").st_ino == inos[f"d{i}"]
            assert os.readlink(where_now / f"s{i}.{rnd}") == f"target-{i}"
            assert os.lstat(where_now / f"s{i}.{rnd}").st_ino == inos[f"s{i}"]
    # over a populated directory: ENOTEMPTY; over a file: ENOTDIR; a file over a dir: EISDIR
    with pytest.raises(OSError) as exc:
        os.rename(dst / "d0.2", dst / "d1.2")
    assert exc.value.errno == 39  # ENOTEMPTY
    with pytest.raises(OSError) as exc:
        os.rename(dst / "d0.2", dst / "s0.2")
    assert exc.value.errno == 20  # ENOTDIR
    with pytest.raises(OSError) as exc:
        os.rename(dst / "s0.2", dst / "d0.2")
    assert exc.value.errno == 21  # EISDIR
    expect = sorted(os.listdir(dst))
    u.remount()
    assert sorted(os.listdir(u.m("dst"))) == expect
    assert os.listdir(u.m("src")) == []
    for i in range(20):
        assert (u.m("dst", f"d{i}.2", "sub", "f")).read_text() == f"f{i}"
        assert os.lstat(u.m("dst", f"d{i}.2")).st_ino == inos[f"d{i}"]
