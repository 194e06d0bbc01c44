"""``stackfs mount``: both syntaxes, errors, detached mode, mount(8) and fstab (the helper)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stackfs.runtime import lifecycle, mountinfo
from stackfs.union import mount_helper

from .conftest import write

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def stackfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stackfs", *args], capture_output=True, text=True, timeout=30
    )


def test_aufs_syntax_leftmost_on_top(union):
    u = union
    write(u.l1 / "f", "l1")
    write(u.l2 / "f", "l2")
    write(u.l2 / "g", "g")
    opts = f"br={u.upper}=rw:{u.l1}=ro:{u.l2}=ro"
    u.stack.mount(lifecycle.stackfs_argv("mount", "-o", opts, "-f", str(u.mp)), u.mp)
    assert u.m("f").read_text() == "l1"
    u.m("g").write_text("up")
    assert (u.upper / "g").read_text() == "up"
    # the work directory of the aufs syntax lives hidden in the upper branch
    assert (u.upper / ".wh..wh.stackfs").is_dir()
    assert sorted(os.listdir(u.m())) == ["f", "g"]


def test_detached_mount_returns_when_live(union):
    u = union
    write(u.l1 / "f", "x")
    r = stackfs("mount", "-o", u.option_string(), str(u.mp))
    assert r.returncode == 0, r.stderr
    try:
        e = mountinfo.find(u.mp)
        assert e is not None and e.kind == "union" and e.fstype == "fuse.stackfs"
        assert u.m("f").read_text() == "x"
    finally:
        lifecycle.unmount(lifecycle.adopt(u.mp))
    assert mountinfo.find(u.mp) is None


@pytest.mark.parametrize(
    "make_opts, words",
    [
        (lambda u: "lowerdir=/nonexistent/x", "no such directory"),
        (lambda u: f"lowerdir={u.l1},bogus=1", "unknown option"),
        (lambda u: f"lowerdir={u.l1}:{u.l1}/sub", "overlap"),
        (lambda u: f"lowerdir={u.l1},upperdir={u.upper}", "workdir"),
        (lambda u: f"lowerdir={u.l1},upperdir={u.upper},workdir={u.l1}", "overlap"),
        (lambda u: f"br={u.upper}=rw:{u.l1}=xx", "permission"),
        (lambda u: f"lowerdir={u.l1},copyup=maybe", "copyup"),
        (lambda u: f"lowerdir={u.l1},entry_timeout=soon", "entry_timeout"),
        (lambda u: f"lowerdir={u.l1},inject=copy_up=explode", "inject"),
        (lambda u: "", "no branches"),
    ],
)
def test_bad_options_one_line_error_nothing_mounted(union, make_opts, words):
    u = union
    (u.l1 / "sub").mkdir()
    r = stackfs("mount", "-o", make_opts(u), str(u.mp))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert words in lines[0], lines[0]
    assert mountinfo.find(u.mp) is None


def test_workdir_on_another_filesystem(union):
    u = union
    other = "/dev/shm"
    if not os.path.isdir(other) or os.stat(other).st_dev == os.stat(u.upper).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    import tempfile

    with tempfile.TemporaryDirectory(dir=other) as w:
        r = stackfs("mount", "-o", f"lowerdir={u.l1},upperdir={u.upper},workdir={w}", str(u.mp))
    assert r.returncode != 0
    assert "different filesystem" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert mountinfo.find(u.mp) is None


def test_mount_helper_argument_parsing():
    p = mount_helper.parse_helper_args
    assert p(["stackfs", "/m", "-o", "rw,lowerdir=/a"]) == ("stackfs", "/m", ["rw,lowerdir=/a"],
                                                              False)
    assert p(["stackfs", "/m", "-n", "-olowerdir=/a"])[2] == ["lowerdir=/a"]
    assert p(["stackfs", "/m", "-f", "-o", "x"])[3] is True


@pytest.fixture
def helper_installed():
    """/sbin/mount.fuse.stackfs (mount(8) only looks in /sbin): ours for the test if absent."""
    path = os.path.join(mount_helper.DEFAULT_DIR, mount_helper.HELPER_NAME)
    if os.geteuid() != 0:
        pytest.skip("installing the mount helper needs root")
    mine = not os.path.exists(path)
    if mine:
        mount_helper.install()
    try:
        yield path
    finally:
        if mine:
            mount_helper.uninstall()


def test_mount_t_fuse_stackfs_and_fstab(union, helper_installed, tmp_path):
    u = union
    write(u.l1 / "f", "via mount(8)")
    r = subprocess.run(
        ["mount", "-t", "fuse.stackfs", "stackfs", str(u.mp), "-o", u.option_string()],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    try:
        assert u.m("f").read_text() == "via mount(8)"
        assert mountinfo.find(u.mp).kind == "union"
    finally:
        lifecycle.unmount(lifecycle.adopt(u.mp))
    fstab = tmp_path / "fstab"
    fstab.write_text(f"stackfs {u.mp} fuse.stackfs {u.option_string()},nofail 0 0\n")
    r = subprocess.run(["mount", "-T", str(fstab), str(u.mp)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        assert u.m("f").read_text() == "via mount(8)"
    finally:
        lifecycle.unmount(lifecycle.adopt(u.mp))


def test_mount_source_is_kept_and_cleanup_still_finds_the_mount(union, helper_installed):
    """``mount -t fuse.stackfs SOURCE MP``: /proc/mounts shows SOURCE (as fstests' FUSE support
    expects); the testbed still knows the daemon (run directory) and ``cleanup`` removes it."""
    u = union
    write(u.l1 / "f", "x")
    run_id = f"src-{os.getpid()}-{u.mp.stat().st_ino}"
    source = f"my-union-{os.getpid()}"
    r = subprocess.run(
        ["mount", "-t", "fuse.stackfs", source, str(u.mp), "-o", u.option_string()],
        capture_output=True, text=True, timeout=30, env={**os.environ, "STACKFS_RUN_ID": run_id},
    )
    assert r.returncode == 0, r.stderr
    try:
        mounts = open("/proc/mounts").read().splitlines()
        line = next(ln for ln in mounts if ln.split()[1] == str(u.mp))
        assert line.split()[:3] == [source, str(u.mp), "fuse.stackfs"]
        e = mountinfo.find(u.mp)
        pid = e.daemon_pid
        assert e.is_testbed and e.kind == "union" and pid is not None
        assert lifecycle.is_testbed_daemon(pid, str(u.mp))
        assert u.m("f").read_text() == "x"
        acts = lifecycle.cleanup(run_id=run_id)
        assert [(a.mountpoint, a.pid) for a in acts] == [(str(u.mp), pid)]
        assert mountinfo.find(u.mp) is None
    finally:
        if mountinfo.find(u.mp) is not None:
            lifecycle.unmount(lifecycle.adopt(u.mp))
