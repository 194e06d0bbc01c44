"""Issue 21, items 5 and 6: a mount point inside a branch is refused; mount options mean what
they say (generic mount flags reach the kernel mount, numbers are range-checked, a branch
option is given once, paths may carry escaped ``,`` ``:`` ``=`` and ``\\``)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from stackfs.runtime import lifecycle, mountinfo
from stackfs.union import options as uopts

from .conftest import write
from .test_union_cli import helper_installed, stackfs  # noqa: F401 - a fixture, used by name


def parse(text: str) -> uopts.UnionOptions:
    return uopts.parse([text])


def option_error(text: str) -> str:
    with pytest.raises(uopts.OptionError) as ei:
        uopts.validate(parse(text))
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def refused(opts: str, mp: Path) -> str:
    """``stackfs mount -o OPTS MP`` (detached, under a time limit: a refusal must not hang):
    a non-zero exit, one line on stderr, and nothing mounted. Returns the line."""
    real = os.path.realpath(mp)  # the daemon mounts at the resolved path
    try:
        r = stackfs("mount", "-o", opts, str(mp))
    finally:
        leftover = mountinfo.find(real)
        if leftover is not None:
            lifecycle.unmount(lifecycle.adopt(real))
    assert leftover is None, f"{real} was mounted"
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- item 5: the mount point and the branches -------------------------------------------------


def _inside_lower(u):
    (u.l1 / "sub").mkdir()
    return u.option_string(), u.l1 / "sub", u.l1


def _equal_to_lower(u):
    return u.option_string(), u.l2, u.l2


def _inside_upper(u):
    (u.upper / "sub").mkdir()
    return u.option_string(), u.upper / "sub", u.upper


def _lower_inside(u):
    (u.mp / "low").mkdir()
    opts = f"lowerdir={u.mp}/low:{u.l2},upperdir={u.upper},workdir={u.work}"
    return opts, u.mp, u.mp / "low"


def _workdir_inside(u):
    (u.mp / "w").mkdir()
    opts = f"lowerdir={u.l1},upperdir={u.upper},workdir={u.mp}/w"
    return opts, u.mp, u.mp / "w"


def _through_a_symlink(u):
    (u.l1 / "sub").mkdir()
    (u.root / "link").symlink_to(u.l1 / "sub")
    return u.option_string(), u.root / "link", u.l1


@pytest.mark.parametrize(
    "case",
    [
        _inside_lower,
        _equal_to_lower,
        _inside_upper,
        _lower_inside,
        _workdir_inside,
        _through_a_symlink,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.mount
@pytest.mark.timeout(60)
def test_mountpoint_and_branch_overlap_refused(union, case):
    """A union mounted inside its own branch deadlocks on its first lookup below the mount
    point (its own fstatat waits for itself); overlayfs (6.18 here) mounts these cases and
    does not hang, because it looks up layer dentries without crossing mounts. Refused."""
    opts, mp, branch = case(union)
    line = refused(opts, mp)
    assert "overlap" in line, line
    assert os.path.realpath(mp) in line and os.path.realpath(branch) in line, line


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_mountpoint_inside_a_bind_mounted_branch_refused(union):
    """The same lower seen through a bind mount: the paths differ, the directory is one."""
    u = union
    (u.l1 / "sub").mkdir()
    bind = u.root / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(u.l1), str(bind)], check=True, timeout=10)
    try:
        line = refused(u.option_string(), bind / "sub")
    finally:
        subprocess.run(["umount", str(bind)], check=True, timeout=10)
    assert "overlap" in line and str(u.l1) in line and str(bind / "sub") in line, line


# -- item 6: numbers, duplicates, escapes -----------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        ("timeout=inf", "timeout"),
        ("timeout=1e400", "timeout"),
        ("timeout=nan", "timeout"),
        ("entry_timeout=-1", "entry_timeout"),
        ("attr_timeout=1e10", "attr_timeout"),
        ("negative_timeout=infinity", "negative_timeout"),
        ("max_tasks=0", "max_tasks"),
        ("max_tasks=-1", "max_tasks"),
        ("max_tasks=10000000000", "max_tasks"),
        ("read_ahead_kb=-1", "read_ahead_kb"),
        ("read_ahead_kb=99999999999999999999", "read_ahead_kb"),
        ("read_ahead_kb=1_0", "read_ahead_kb"),
        ("lowerdir=/b", "lowerdir given twice"),
        ("upperdir=/u,upperdir=/v,workdir=/w", "upperdir given twice"),
        ("upperdir=/u,workdir=/w,workdir=/x", "workdir given twice"),
        ("strictatime", "strictatime"),
    ],
)
def test_bad_numbers_and_duplicates_name_the_option(extra, words):
    msg = option_error(f"lowerdir=/a,{extra}")
    assert msg.startswith(words.split()[0]), msg
    assert words in msg, msg


def test_br_given_twice():
    assert "br given twice" in option_error("br=/a=rw:/b=ro,br=/c")


def test_numbers_in_range_are_taken():
    o = parse("lowerdir=/a,timeout=0.5,negative_timeout=0,max_tasks=1,read_ahead_kb=0")
    assert (o.entry_timeout, o.attr_timeout, o.negative_timeout) == (0.5, 0.5, 0.0)
    assert (o.max_tasks, o.read_ahead_kb) == (1, 0)


def test_escaped_commas_colons_equals_backslashes():
    o = parse(r"lowerdir=/x/a\,b\:c\=d:/y,upperdir=/u\\v,workdir=/w\,1")
    assert [(b.path, b.writable) for b in o.branches] == [
        ("/u\\v", True),
        ("/x/a,b:c=d", False),
        ("/y", False),
    ]
    assert o.workdir == "/w,1"
    o = parse(r"br=/x/a\,b\:c\=d=rw:/y\=z")
    assert [(b.path, b.writable) for b in o.branches] == [("/x/a,b:c=d", True), ("/y=z", False)]


def test_errors_name_the_option_not_a_path_fragment(tmp_path):
    msg = option_error(f"lowerdir={tmp_path}/a,b")
    assert "lowerdir" in msg and "\\," in msg, msg
    msg = option_error("lowerdir=/nonexistent/a\\,b")
    assert msg.startswith("lowerdir") and "/nonexistent/a,b" in msg, msg


def test_generic_flags_are_kernel_mount_flags():
    o = parse("lowerdir=/a,noexec,nosuid,exec,noexec,sync,noatime,relatime,nodev,defaults")
    assert o.mount_flags() == ["noexec", "nosuid", "sync", "atime", "nodev"]
    assert parse("lowerdir=/a,ro").read_only and not parse("lowerdir=/a,ro,rw").read_only


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", ["timeout=inf", "max_tasks=0", "lowerdir=/"])
def test_bad_option_refused_by_stackfs_mount(union, extra):
    line = refused(union.option_string(extra), union.mp)
    assert line.removeprefix("stackfs: ").startswith(extra.split("=")[0]), line


# -- item 6: what the kernel mount says ---------------------------------------------------------


def _exec_result(path: Path) -> str | int:
    """The script's output, or the errno of its execve."""
    try:
        r = subprocess.run([str(path)], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return exc.errno or 0
    return r.stdout


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag, noexec", [("noexec", True), ("exec", False), ("", False)])
def test_noexec_stops_exec(union, flag, noexec):
    u = union
    write(u.l1 / "prog", "#!/bin/sh\necho ran\n", mode=0o755)
    u.mount(*([flag] if flag else []))
    e = mountinfo.find(u.mp)
    assert e is not None
    assert ("noexec" in e.mount_options.split(",")) == noexec, e.mount_options
    assert _exec_result(u.m("prog")) == (errno.EACCES if noexec else "ran\n")


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_ro_is_a_read_only_kernel_mount(union):
    u = union
    write(u.l1 / "f", "x")
    u.mount("ro", "nosuid")
    e = mountinfo.find(u.mp)
    assert e is not None and "ro" in e.mount_options.split(","), e.mount_options
    assert u.m("f").read_text() == "x"
    with pytest.raises(OSError) as ei:
        u.m("g").write_text("y")
    assert ei.value.errno == errno.EROFS
    assert not (u.upper / "g").exists()


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_escaped_branch_path_mounts(union):
    u = union
    odd = u.root / "a,b:c=d"
    write(odd / "f", "odd")
    esc = str(odd).replace(",", "\\,").replace(":", "\\:").replace("=", "\\=")
    u.mount(lowers=[Path(esc), u.l2])
    assert u.m("f").read_text() == "odd"
    u.m("g").write_text("up")
    assert (u.upper / "g").read_text() == "up"


@pytest.mark.mount
@pytest.mark.timeout(90)
def test_mount8_and_fstab_pass_flags_and_escapes(union, helper_installed, tmp_path):  # noqa: F811
    """mount(8) (util-linux 2.38 here) hands the helper the generic flags first and keeps
    ``\\,`` and ``\\:`` in the rest; in fstab an octal ``\\054`` would become a bare comma."""
    u = union
    odd = u.root / "a,b:c"
    write(odd / "prog", "#!/bin/sh\necho ran\n", mode=0o755)
    esc = str(odd).replace(",", "\\,").replace(":", "\\:")
    opts = f"noexec,lowerdir={esc}:{u.l2},upperdir={u.upper},workdir={u.work}"
    r = subprocess.run(
        ["mount", "-t", "fuse.stackfs", "stackfs", str(u.mp), "-o", opts],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    try:
        e = mountinfo.find(u.mp)
        assert e is not None and "noexec" in e.mount_options.split(","), e
        assert _exec_result(u.m("prog")) == errno.EACCES
    finally:
        lifecycle.unmount(lifecycle.adopt(u.mp))
    fstab = tmp_path / "fstab"
    fstab.write_text(f"stackfs {u.mp} fuse.stackfs ro,{opts},nofail 0 0\n")
    r = subprocess.run(
        ["mount", "-T", str(fstab), str(u.mp)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    try:
        e = mountinfo.find(u.mp)
        assert e is not None and {"ro", "noexec"} <= set(e.mount_options.split(",")), e
        assert _exec_result(u.m("prog")) == errno.EACCES
        with pytest.raises(OSError) as ei:
            u.m("g").write_text("y")
        assert ei.value.errno == errno.EROFS
    finally:
        lifecycle.unmount(lifecycle.adopt(u.mp))


def test_reproducer_argv_escapes_branch_paths(tmp_path):
    """The reproducers' and the plugin's union command line (``repro.stacks.union_argv``)
    escapes its branch paths, so a directory with ``,`` ``:`` ``=`` or ``\\`` is one branch."""
    from stackfs.repro.stacks import union_argv

    upper, lower = str(tmp_path / "u,1:x"), str(tmp_path / "l=1\\y")
    argv = union_argv(upper, [lower], tmp_path / "m")
    o = parse(argv[argv.index("-o") + 1])
    assert [(b.path, b.writable) for b in o.branches] == [(upper, True), (lower, False)]
