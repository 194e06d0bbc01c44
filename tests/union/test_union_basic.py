"""Lookup, readdir merge, whiteouts, opaque directories, names (issue 3, Semantics)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def test_lookup_top_down_and_merged_readdir(mounted):
    u = mounted
    assert u.m("a").read_text() == "l1-a"  # the first branch that has the name wins
    assert u.m("b").read_text() == "l2-b"
    assert sorted(os.listdir(u.m())) == ["a", "b", "d"]
    assert sorted(os.listdir(u.m("d"))) == ["sub", "x", "y"]
    assert u.m("d", "sub", "z").read_text() == "l2-d-sub-z"
    # nothing was copied up by reading
    assert os.listdir(u.upper) == []


def test_unlink_leaves_whiteout_and_create_over_it(mounted):
    u = mounted
    os.unlink(u.m("a"))
    assert not u.m("a").exists()  # l2's a stays hidden too
    assert (u.upper / ".wh.a").exists()
    assert "a" not in os.listdir(u.m())
    assert ".wh.a" not in os.listdir(u.m())
    u.m("a").write_text("new")
    assert u.m("a").read_text() == "new"
    assert not (u.upper / ".wh.a").exists()
    assert (u.l1 / "a").read_text() == "l1-a"  # lower branches untouched


def test_rmdir_of_merged_dir_that_looks_empty(mounted):
    u = mounted
    for p in ("d/x", "d/y", "d/sub/z"):
        os.unlink(u.m(p))
    with pytest.raises(OSError) as ei:
        os.rmdir(u.m("d"))
    assert ei.value.errno == errno.ENOTEMPTY
    os.rmdir(u.m("d", "sub"))
    assert os.listdir(u.m("d")) == []
    os.rmdir(u.m("d"))
    assert not u.m("d").exists()
    assert (u.upper / ".wh.d").exists()
    # mkdir over the whited-out directory: opaque, lower contents stay hidden
    os.mkdir(u.m("d"))
    assert os.listdir(u.m("d")) == []
    assert (u.upper / "d" / ".wh..wh..opq").exists()
    u.m("d", "x").write_text("fresh")
    assert sorted(os.listdir(u.m("d"))) == ["x"]


def test_whiteout_names_refused_and_name_max(mounted):
    u = mounted
    for bad in (".wh.foo", ".wh..wh..opq"):
        with pytest.raises(OSError) as ei:
            os.stat(u.m(bad))
        assert ei.value.errno == errno.EPERM
        with pytest.raises(OSError) as ei:
            open(u.m(bad), "w").close()
        assert ei.value.errno == errno.EPERM
    sv = os.statvfs(u.m())
    assert sv.f_namemax == os.statvfs(u.upper).f_namemax - len(".wh.")
    ok = "n" * sv.f_namemax
    u.m(ok).write_text("fits")
    assert u.m(ok).read_text() == "fits"
    with pytest.raises(OSError) as ei:
        open(u.m("n" * (sv.f_namemax + 1)), "w").close()
    assert ei.value.errno == errno.ENAMETOOLONG


def test_opaque_in_lower_hides_below(union):
    u = union
    write(u.l1 / "d" / "x", "x")
    write(u.l1 / "d" / ".wh..wh..opq", "")
    write(u.l2 / "d" / "y", "y")
    write(u.l1 / ".wh.gone", "")
    write(u.l2 / "gone", "hidden")
    u.mount("timeout=0")
    assert os.listdir(u.m("d")) == ["x"]
    assert not u.m("d", "y").exists()
    assert not u.m("gone").exists()
    assert "gone" not in os.listdir(u.m())


def test_special_files_symlinks_links(mounted):
    u = mounted
    os.symlink("a", u.m("lnk"))
    assert os.readlink(u.m("lnk")) == "a"
    assert u.m("lnk").read_text() == "l1-a"
    os.mkfifo(u.m("fifo"), 0o640)
    assert stat.S_ISFIFO(os.lstat(u.m("fifo")).st_mode)
    os.mknod(u.m("null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(u.m("null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # (opening it gives EACCES: FUSE mounts are nodev)
    # a lower symlink
    os.symlink("b", u.l2 / "lowlnk")
    assert os.readlink(u.m("lowlnk")) == "b"
    os.link(u.m("b"), u.m("b2"))  # link copies b up first
    assert os.stat(u.m("b")).st_ino == os.stat(u.m("b2")).st_ino
    assert os.stat(u.m("b")).st_nlink == 2
    assert (u.upper / "b").exists() and (u.upper / "b2").exists()


def test_xattrs_copy_up_and_set(mounted):
    u = mounted
    os.setxattr(u.l2 / "b", "user.color", b"blue")
    assert os.getxattr(u.m("b"), "user.color") == b"blue"
    assert "user.color" in os.listxattr(u.m("b"))
    os.setxattr(u.m("b"), "user.size", b"big")
    assert (u.upper / "b").exists()
    assert os.getxattr(u.upper / "b", "user.color") == b"blue"
    assert os.getxattr(u.m("b"), "user.size") == b"big"
    os.removexattr(u.m("b"), "user.color")
    assert "user.color" not in os.listxattr(u.m("b"))
    assert os.getxattr(u.l2 / "b", "user.color") == b"blue"


def test_utimensat_ns_append_trunc_mmap(mounted):
    import mmap

    u = mounted
    os.utime(u.m("b"), ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(u.m("b"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    with open(u.m("a"), "a") as f:
        f.write("+app")
    assert u.m("a").read_text() == "l1-a+app"
    fd = os.open(u.m("d/x"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"T")
    os.close(fd)
    assert u.m("d/x").read_text() == "T"
    assert (u.l1 / "d" / "x").read_text() == "l1-d-x"
    write(u.l2 / "big", b"\0" * 8192)
    with open(u.m("big"), "r+b") as f:
        mm = mmap.mmap(f.fileno(), 8192)
        mm[4096:4101] = b"hello"
        mm.flush()
        mm.close()
    with open(u.m("big"), "rb") as f:
        data = f.read()
        assert data[4096:4101] == b"hello"
        mm = mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ)
        assert mm[4096:4101] == b"hello"
        mm.close()
    assert (u.upper / "big").read_bytes()[4096:4101] == b"hello"


def test_permissions_and_owner_of_new_files(mounted):
    u = mounted
    os.chmod(u.m(), 0o777)  # copies the root's attributes to the upper root
    write(u.l2 / "private", "secret", mode=0o600)
    pid = os.fork()
    if pid == 0:  # child: become an ordinary user
        code = 0
        try:
            os.chdir(u.m())  # pytest's tmp dirs are 0700: go in before dropping root
            os.setgroups([])
            os.setgid(1234)
            os.setuid(4321)
            try:
                open("private").read()
                code = 2
            except PermissionError:
                pass
            with open("mine", "w") as f:
                f.write("x")
            os.mkdir("mydir")
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for name in ("mine", "mydir"):
        st = os.stat(u.upper / name)
        assert (st.st_uid, st.st_gid) == (4321, 1234)
        st = os.stat(u.m(name))
        assert (st.st_uid, st.st_gid) == (4321, 1234)


def test_deep_tree_beyond_path_max(mounted):
    u = mounted
    comp = "d" * 200
    depth = 25  # 25 * 201 bytes > PATH_MAX (4096)
    # build it in the lower branch through directory fds (the path is too long for a string)
    fd = os.open(u.l2, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(comp, dir_fd=fd)
        nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    wfd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(wfd, b"deep")
    os.close(wfd)
    os.close(fd)
    # walk it through the union, again with dir fds
    fd = os.open(u.m(), os.O_RDONLY)
    for _ in range(depth):
        nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    rfd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
    assert os.read(rfd, 10) == b"deep"
    os.close(rfd)
    wfd = os.open("leaf", os.O_WRONLY | os.O_APPEND, dir_fd=fd)  # copy-up of a deep file
    os.write(wfd, b"er")
    os.close(wfd)
    wfd = os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.close(wfd)
    with pytest.raises(OSError) as ei:
        os.open("x" * 300, os.O_RDONLY, dir_fd=fd)
    assert ei.value.errno == errno.ENAMETOOLONG
    os.unlink("new", dir_fd=fd)
    rfd = os.open("leaf", os.O_RDONLY, dir_fd=fd)
    assert os.read(rfd, 10) == b"deeper"
    os.close(rfd)
    os.close(fd)


def test_udba_changes_in_branch_show_through(mounted):
    u = mounted
    assert u.m("b").read_text() == "l2-b"
    write(u.l2 / "b", "changed directly")
    write(u.l2 / "fresh", "new in branch")
    os.unlink(u.l2 / "d" / "y")
    assert u.m("b").read_text() == "changed directly"  # timeout=0: at once
    assert u.m("fresh").read_text() == "new in branch"
    assert sorted(os.listdir(u.m("d"))) == ["sub", "x"]


def test_read_only_union_without_upper(union):
    u = union
    write(u.l1 / "f", "ro")
    argv_opts = f"br={u.l1}=ro:{u.l2}=ro"
    from stackfs.runtime import lifecycle

    u.stack.mount(lifecycle.stackfs_argv("mount", "-o", argv_opts, "-f", str(u.mp)), u.mp)
    assert u.m("f").read_text() == "ro"
    for op in (lambda: u.m("f").write_text("x"), lambda: os.mkdir(u.m("n")),
               lambda: os.unlink(u.m("f"))):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.EROFS
