"""Issue 27 without a VM: the guest kernel's hung-task detector (its lines parsed, cross-checked
with a watchdog report), any Debian suite from the host's mirror, split sid packages, a kernel
build tree or a vmlinuz with a modules directory as ``--kernel``, the matrix's scenario groups
and its progress lines; issue 26.3: the first ``stackfs vm`` command's set-up."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stackfs.vm import boot, fetch, guest, hungtask, kernels, matrix, setup
from stackfs.vm.progress import Progress, bar, expected_rows

from .conftest import FAKE_VNG, add_kernel

pytestmark = pytest.mark.timeout(60)

# Lines as 6.1/6.12 (hung task) and 6.16+ with CONFIG_DETECT_HUNG_TASK_BLOCKER print them
# (kernel/hung_task.c: check_hung_task(), debug_show_blocker()).
DMESG = """\
[    5.100000] virtme-ng-init: starting script
[   40.000000] stackfs vm: scenario autofs-create hung_task_timeout_secs=3
[   47.123456] INFO: task automountd:647 blocked for more than 3 seconds.
[   47.123500]       Not tainted 7.2.13+deb14-amd64 #1 Debian 7.2.13-1
[   47.123600] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[   47.123700] task:automountd      state:D stack:0     pid:647   tgid:644   ppid:636
[   47.124000] INFO: task automountd:647 <writer> blocked on an rw-semaphore likely owned by \
task mkdir:651 <writer>
[   48.200000] INFO: task automountd:647 blocked for more than 4 seconds.
[   48.210000] INFO: task automountd:647 <writer> blocked on an rw-semaphore likely owned by \
task mkdir:651 <writer>
[   60.000000] stackfs vm: scenario gfs-mmap-abba hung_task_timeout_secs=10
[   75.000000] INFO: task mmapio:900 blocked for more than 10 seconds.
[   75.100000] INFO: task kworker/0:1 x:77 is blocked on a mutex likely owned by task cat:78.
"""


def report(d_tid: int = 647, holder: int = 651, state: str = "D") -> dict:
    """A watchdog report.json as the autofs-create deadlock gives it (trimmed)."""
    return {
        "hangs": [
            {"task": {"tid": d_tid, "comm": "automountd", "state": state}, "blocked_for": 5.2},
            {"task": {"tid": 651, "comm": "mkdir", "state": "S"}, "blocked_for": 5.1},
        ],
        "blocked": [{"tid": d_tid, "comm": "automountd", "state": state}],
        "graph": {
            "nodes": [
                {"id": f"task:{d_tid}", "kind": "task", "attrs": {"tid": d_tid}},
                {"id": f"task:{holder}", "kind": "task", "attrs": {"tid": holder, "comm": "x"}},
                {"id": "klock:/mnt/auto", "kind": "klock", "attrs": {}},
            ],
            "edges": [
                {"src": f"task:{d_tid}", "kind": "lock_wait", "dst": "klock:/mnt/auto"},
                {"src": "klock:/mnt/auto", "kind": "held_by", "dst": f"task:{holder}"},
            ],
        },
    }


RESULT = {"processes": [{"pid": 650}, {"pid": 651}]}


def test_parse_the_kernels_lines_per_scenario() -> None:
    sections = hungtask.parse(DMESG)
    assert set(sections) == {"", "autofs-create", "gfs-mmap-abba"}
    (a,) = sections["autofs-create"]
    # reported at each check while blocked (seen on 7.2: at 3 s and 4 s): one report
    assert (a.pid, a.comm, a.seconds) == (647, "automountd", 4)
    assert (a.lock, a.owner_pid, a.owner_comm) == ("rw-semaphore", 651, "mkdir")
    assert len(a.lines) == 4 and a.lines[0].startswith("[   47.123456] INFO: task automountd:647")
    m, k = sections["gfs-mmap-abba"]
    assert (m.pid, m.seconds, m.owner_pid) == (900, 10, None)
    assert (k.comm, k.pid, k.lock, k.owner_pid) == ("kworker/0:1 x", 77, "mutex", 78)


def test_cross_check_agrees_differs_and_not_the_kernels() -> None:
    kr = hungtask.parse(DMESG)["autofs-create"]
    ok = hungtask.cross_check(RESULT, report(), kr, blocker=True, timeout=3)
    assert ok.verdict == hungtask.AGREES, ok.text
    assert "automountd:647 in D" in ok.why and "owner of automountd:647 mkdir:651" in ok.why
    # another owner inferred: a real finding, said what
    bad = hungtask.cross_check(RESULT, report(holder=650), kr, blocker=True, timeout=3)
    assert bad.verdict == hungtask.DIFFERS
    assert "the kernel names owner mkdir:651, the watchdog x:650" in bad.why
    # the kernel did not report the watchdog's D task
    miss = hungtask.cross_check(RESULT, report(), [], blocker=False, timeout=3)
    assert miss.verdict == hungtask.DIFFERS and "not reported by the kernel: automountd:647" in (
        miss.why
    )
    # no blocker feature: the tasks agree, owners are not compared
    old = [hungtask.KernelReport(647, "automountd", 3, ["INFO: task automountd:647 ..."])]
    assert hungtask.cross_check(RESULT, report(), old, blocker=False, timeout=3).verdict == (
        hungtask.AGREES
    )
    # only S tasks hung (a FUSE wait): the kernel's detector looks at D only
    s_only = hungtask.cross_check(RESULT, report(state="S"), [], blocker=True, timeout=3)
    assert s_only.verdict == hungtask.NOT_ITS and "interruptible FUSE waits" in s_only.why
    # a modelled event, nothing blocked
    ev = hungtask.cross_check({}, {"events": [{"kind": "bug_on"}]}, [], blocker=True, timeout=3)
    assert ev.verdict == hungtask.NOT_ITS and "modelled kernel event (bug_on)" in ev.why
    # the kernel reports a task of the run the watchdog did not see in D
    extra = [hungtask.KernelReport(650, "mkdir", 3, ["INFO: task mkdir:650 ..."])]
    ex = hungtask.cross_check(RESULT, {"hangs": []}, extra, blocker=True, timeout=3)
    assert ex.verdict == hungtask.DIFFERS and "not by the watchdog: mkdir:650" in ex.why
    # a D task asleep TASK_KILLABLE (seen on 6.1: gfs-mmap-abba's writers, their page-in under
    # get_user_pages_unlocked), which khungtaskd skips although /proc says D
    gup = [
        "folio_wait_bit_common+0x13d/0x380",
        "filemap_fault+0xda/0x910",
        "__get_user_pages+0x1ea/0x660",
        "get_user_pages_unlocked+0xcb/0x310",
        "fuse_direct_io+0x174/0x840 [fuse]",
    ]
    r = report()
    r["hangs"][0]["task"].update(comm="mmapio", stack=gup)
    k = hungtask.cross_check(RESULT, r, [], blocker=True, timeout=10)
    assert k.verdict == hungtask.NOT_ITS and "mmapio:647 sleeps killable (in filemap_fault" in k.why
    assert hungtask.killable({"stack": ["mutex_lock_killable+0x1/0x2"]}) == "in mutex_lock_killable"
    assert hungtask.killable({"stack": ["filename_create+0xbd/0x1c0"]}) is None
    # a fault on a user address (copy_to_user of a buffered read): FAULT_FLAG_DEFAULT, killable
    user = ["folio_wait_bit_common+0x1", "filemap_fault+0x2", "do_user_addr_fault+0x3"]
    assert "under do_user_addr_fault" in (hungtask.killable({"stack": user}) or "")
    gup612 = ["folio_wait_bit_common+0x1", "filemap_fault+0x2", "gup_fast_fallback+0x3"]
    assert "under gup_fast_fallback" in (hungtask.killable({"stack": gup612}) or "")
    read = ["folio_wait_bit_common+0x1", "filemap_get_pages+0x2", "filemap_read+0x3"]
    assert "filemap_update_page waits TASK_KILLABLE" in (hungtask.killable({"stack": read}) or "")
    text = "\n".join(ok.render())
    assert "The kernel's own hung-task detector" in text and "  | [   47.123456] INFO" in text


def test_kernel_timeout_precedes_the_watchdogs_verdict() -> None:
    # reported at most two check intervals after its timeout: before the watchdog's threshold
    assert [hungtask.kernel_timeout(t) for t in (1.0, 5.0, 12.5, 25.0)] == [1, 3, 10, 23]
    assert boot.hung_task_secs("5") == 3 and boot.hung_task_secs("5", 2.5) == 10
    assert hungtask.sysctls(3)["hung_task_warnings"] == "-1"


def test_guest_leaves_a_hosts_detector_alone(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1\n")
    assert not guest.in_virtme_guest(tmp_path / "cmdline")
    (tmp_path / "cmdline").write_text("virtme_hostname=virtme-ng nr_open=1048576\n")
    assert guest.in_virtme_guest(tmp_path / "cmdline")
    before = Path("/proc/sys/kernel/hung_task_timeout_secs")
    value = before.read_text() if before.exists() else None
    assert "skipped" in guest.hung_task_detector(1)  # this is a host
    assert (before.read_text() if before.exists() else None) == value


def test_matrix_sets_the_detector_per_scenario_in_the_guest_only(tmp_path: Path) -> None:
    from stackfs.repro import registry

    script = matrix.guest_script(["autofs-create", "gfs-mmap-abba"], tmp_path, None, "5")[2]
    assert "echo 3 > /proc/sys/kernel/hung_task_timeout_secs" in script  # 1 s x 5, less 2
    gfs = boot.hung_task_secs("5", registry.get("gfs-mmap-abba").threshold)
    assert f"echo {gfs} > /proc/sys/kernel/hung_task_timeout_secs" in script
    assert f"'stackfs vm: scenario gfs-mmap-abba hung_task_timeout_secs={gfs}' > /dev/kmsg" in (
        script
    )
    assert script.count("grep -q virtme_hostname= /proc/cmdline &&") == 2


def test_matrix_rows_get_the_kernels_word(tmp_path: Path) -> None:
    run = tmp_path / "reports" / "autofs-create" / "buggy" / "001"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(RESULT))
    (run / "report.json").write_text(json.dumps(report()))
    (run / "report.txt").write_text("the watchdog's report\n")
    (tmp_path / "dmesg.txt").write_text(DMESG)
    (tmp_path / "guest.json").write_text(json.dumps({"hung_task": {"hung_task_panic": "0"}}))
    data = {
        "runs": [
            {
                "scenario": "autofs-create",
                "variant": "buggy",
                "expected": "deadlock",
                "observed": "deadlock",
                "matched": True,
                "report_dir": str(run),
            }
        ]
    }
    rows = matrix.rows_of("7.2.13+deb14-amd64", data)
    k = kernels.Kernel("7.2.13+deb14-amd64", str(tmp_path / "vmlinuz"), None, "path")
    unmatched = matrix.kernel_checks(k, rows, tmp_path / "dmesg.txt", "5")
    assert rows[0].kernel_check.startswith("kernel agrees: automountd:647 in D; owner of")
    assert unmatched == ["gfs-mmap-abba: mmapio:900 blocked > 10 s"]
    assert "  | [   47.124000] INFO: task automountd:647 <writer> blocked on an rw-semaphore" in (
        (run / "report.txt").read_text()
    )
    cell = matrix.Cell(k, ["autofs-create"], rows, None)
    assert matrix.table_rows([cell])[0][-1] == rows[0].kernel_check
    # the tests' stand-in vng: the "guest" was this host, whose detector is left alone
    (tmp_path / "guest.json").write_text(json.dumps({"hung_task": {"skipped": "not a guest"}}))
    assert matrix.kernel_checks(k, rows, tmp_path / "dmesg.txt", "5") == []
    assert rows[0].kernel_check == "not the kernel's to see: not a guest"


def test_any_suite_from_the_hosts_mirror() -> None:
    sources = [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://mirror.example/debian-security", "bookworm-security"),
    ]
    for suite in ("sid", "trixie", "trixie-backports", "bookworm-backports"):
        assert fetch.mirror_for(suite, sources, "bookworm") == "http://mirror.example/debian"
    assert fetch.mirror_for("sid", [], "bookworm") is None


def test_split_package_unpacked_in_the_stores_layout(tmp_path: Path) -> None:
    release = "7.2.13+deb14-amd64"
    mods = tmp_path / "usr" / "lib" / "modules" / release
    (mods / "kernel" / "fs" / "fuse").mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(b"image")
    (mods / "config").write_text("CONFIG_DETECT_HUNG_TASK_BLOCKER=y\n")
    fetch.usr_merged(tmp_path, release)
    assert (tmp_path / "boot" / f"vmlinuz-{release}").read_bytes() == b"image"
    assert (tmp_path / "lib" / "modules" / release / "kernel" / "fs" / "fuse").is_dir()
    k = kernels.Kernel(release, str(tmp_path / "boot" / f"vmlinuz-{release}"), None, "fetched")
    assert kernels.config(k)["CONFIG_DETECT_HUNG_TASK_BLOCKER"] == "y"

    class FakeApt(fetch.Apt):
        def depends(self, package: str) -> list[str]:
            return [
                "linux-base-7.2.13+deb14-amd64",
                "linux-binary-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64",
                "initramfs-tools",
                "linux-modules-7.2.13+deb14-cloud-amd64",
            ]

    assert fetch.parts(FakeApt("sid"), f"linux-image-{release}", release) == [
        f"linux-image-{release}",
        f"linux-base-{release}",
        f"linux-binary-{release}",
        f"linux-modules-{release}",
    ]


def fake_tree(root: Path, release: str = "7.3.0-rc1-dirty") -> Path:
    """A kernel build tree's layout (make bzImage modules): nothing in it boots."""
    (root / "arch" / "x86" / "boot").mkdir(parents=True)
    (root / "arch" / "x86" / "boot" / "bzImage").write_bytes(b"\0" * 512 + b"not a kernel")
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text(release + "\n")
    (root / ".config").write_text("CONFIG_FUSE_FS=y\nCONFIG_DETECT_HUNG_TASK_BLOCKER=y\n")
    (root / "modules.order").write_text("fs/fuse/cuse.ko\n")
    return root


def test_kernel_build_tree_as_kernel(store: Path, fake_vm: dict[str, str], tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "linux")
    k = kernels.resolve(str(tree))
    assert (k.release, k.source, k.image, k.moddir) == (
        "7.3.0-rc1-dirty",
        "tree",
        str(tree),
        str(tree),
    )
    assert kernels.config(k)["CONFIG_DETECT_HUNG_TASK_BLOCKER"] == "y"
    # virtme-ng is given the tree (it boots arch/x86/boot/bzImage, links the tree's modules)
    argv = boot.vng_argv(k, ["true"], tmp_path, kvm=False)
    assert argv[1:3] == ["--run", str(tree)]
    (tree / ".config").unlink()
    with pytest.raises(kernels.KernelError, match="no .config"):
        kernels.resolve(str(tree))
    with pytest.raises(kernels.KernelError, match=r"no arch/x86/boot/bzImage \(make bzImage"):
        kernels.resolve(str(tmp_path))


def test_vmlinuz_with_a_modules_directory(store: Path, tmp_path: Path) -> None:
    release = "7.3.0-rc1"
    image = tmp_path / "build" / f"vmlinuz-{release}"
    image.parent.mkdir()
    image.write_bytes(b"not a kernel")
    inst = tmp_path / "inst"  # make modules_install INSTALL_MOD_PATH=inst
    (inst / "lib" / "modules" / release / "kernel").mkdir(parents=True)
    k = kernels.resolve(str(image), modules=inst)
    assert k.source == "path" and k.moddir == str(inst / "lib" / "modules" / release)
    # laid out as virtme-ng finds an image's modules: lib/modules/RELEASE beside boot/
    staged = Path(k.image)
    assert staged.parent.name == "boot" and staged.resolve() == image.resolve()
    linked = staged.parent.parent / "lib" / "modules" / release
    assert linked.resolve() == (inst / "lib" / "modules" / release).resolve()
    with pytest.raises(kernels.KernelError, match="no lib/modules/7.3.0-rc1 with kernel/"):
        kernels.resolve(str(image), modules=tmp_path / "build")


def test_newest(store: Path) -> None:
    for r in ("6.1.0-56-amd64", "7.2.13+deb14-amd64", "6.12.95+deb12-amd64"):
        add_kernel(store, r)
    assert kernels.resolve("newest").release == "7.2.13+deb14-amd64"


def test_matrix_groups_and_progress(tmp_path: Path) -> None:
    names = matrix.scenario_names()
    groups = matrix.split(names, 2)
    assert sorted(n for g in groups for n in g) == sorted(names) and len(groups) == 2
    rows = [expected_rows(g) for g in groups]
    assert sum(rows) == expected_rows(names) and max(rows) - min(rows) <= max(rows) // 2
    assert matrix.split(names, 1) == [names]
    assert bar(3, 12, 12) == "[###.........] 3/12"
    out = io.StringIO()
    prog = Progress(2, out, tty=False)
    prog.watch(tmp_path, "6.1.0-57-amd64")
    prog.poll()
    assert out.getvalue() == ""
    res = tmp_path / "reports" / "autofs-create" / "buggy" / "001" / "result.json"
    res.parent.mkdir(parents=True)
    res.write_text(
        json.dumps(
            {
                "scenario": "autofs-create",
                "case": "default",
                "variant": "buggy",
                "observed": "deadlock",
                "matched": True,
                "total_seconds": 12.25,
            }
        )
    )
    # an attempt another process disturbed (the runner retries it: 001-disturbed-1) is no row
    gone = res.parent.with_name("001-disturbed-1") / "result.json"
    gone.parent.mkdir()
    gone.write_text(res.read_text())
    prog.poll()
    prog.poll()  # once per row
    assert out.getvalue() == (
        "[  1/2] 6.1.0-57-amd64: autofs-create buggy: deadlock (ok, 12.2 s)\n"
    )
    # on a terminal: the same line, then a bar rewritten in place
    tty = io.StringIO()
    prog = Progress(2, tty, tty=True)
    prog.watch(tmp_path, "6.1.0-57-amd64")
    prog.poll()
    assert tty.getvalue().startswith("\r\033[K[  1/2] 6.1.0-57-amd64: autofs-create buggy")
    assert "\r\033[K[###############...............] 1/2 " in tty.getvalue()


def test_first_use_installs_qemu_and_fetches_a_kernel(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkgs = setup.vm_packages()  # provision.sh's own list
    assert "qemu-system-x86" in pkgs and "busybox-static" in pkgs
    calls: list[list[str]] = []

    def fake_run(argv, **kw):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    qemu = {"missing": True}
    monkeypatch.setattr(setup, "qemu_missing", lambda: qemu["missing"])
    monkeypatch.setattr(setup, "vm_packages", lambda: ["qemu-system-x86", "busybox-static"])
    monkeypatch.setattr(setup, "missing", lambda p: p)
    monkeypatch.setattr(setup.subprocess, "run", fake_run)
    monkeypatch.setattr(setup.os, "geteuid", lambda: 0)

    def fake_fetch(spec: str, store_: Path | None = None, force: bool = False):
        calls.append(["fetch", spec])
        add_kernel(store, "6.1.0-57-amd64")
        return kernels.fetched()[0]

    monkeypatch.setattr(fetch, "fetch", fake_fetch)
    monkeypatch.setattr(fetch, "host_release", lambda: "bookworm")
    out = io.StringIO()
    setup.ready(out)
    assert calls[0][:4] == ["apt-get", "install", "-y", "-q"]
    assert calls[0][-2:] == ["qemu-system-x86", "busybox-static"]
    assert calls[1] == ["fetch", "bookworm"]
    text = out.getvalue()
    assert "first use: installing qemu-system-x86 busybox-static with apt-get (once)" in text
    assert "first use: no bootable kernel; fetching bookworm's" in text
    assert "6.1.0-57-amd64 ready in" in text
    out = io.StringIO()
    calls.clear()
    qemu["missing"] = False  # there now: nothing to do
    setup.ready(out)
    assert calls == [] and out.getvalue() == ""
    qemu["missing"] = True
    monkeypatch.setattr(setup.os, "geteuid", lambda: 1000)
    with pytest.raises(boot.VMError, match=r"as root: ./provision.sh --with vm"):
        setup.ready(io.StringIO())


@pytest.mark.skipif(os.geteuid() != 0, reason="the guest side runs as root (modprobe, mount)")
@pytest.mark.timeout(300)
def test_matrix_runs_groups_side_by_side_with_a_line_per_row(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    """Two scenario groups of one kernel in two (stand-in) VMs at once; a line per row as its
    result lands; one JUnit file per kernel; the kernel column (here: not a guest)."""
    add_kernel(store, "6.1.0-57-amd64")
    out = tmp_path / "m"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackfs",
            "vm",
            "matrix",
            "--kernels",
            "6.1",
            "--scenarios",
            "autofs-create,autofs-expire",
            "--variant",
            "buggy",
            "--jobs",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "STACKFS_VM_KERNELS": str(store)},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0] == "1 kernels x 2 scenarios (2 rows) in 2 VMs, 2 at a time, 1 CPU each"
    progress = [ln for ln in lines if ln.startswith("[  ") and "/2] 6.1.0-57-amd64: " in ln]
    assert len(progress) == 2 and {ln.split()[3] for ln in progress} == {
        "autofs-create",
        "autofs-expire",
    }
    assert (out / "6.1.0-57-amd64" / "part1" / "guest.json").exists()
    assert (out / "6.1.0-57-amd64" / "part2" / "guest.json").exists()
    root = ET.parse(out / "6.1.0-57-amd64" / "junit.xml").getroot()
    assert root.get("tests") == "2" and len(root) == 2
    rows = json.loads((out / "matrix.json").read_text())["rows"]
    assert {r["kernel_check"].split(":")[0] for r in rows} == {"not the kernel's to see"}


def test_an_interrupted_matrix_stops_its_vms(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    """``stop_all`` stops the VMs worker threads are waiting for (Ctrl-C in ``vm matrix``)."""
    import threading

    k = kernels.resolve(str(add_kernel(store, "6.1.0-57-amd64")))
    runs: list[boot.VMRun] = []
    t = threading.Thread(target=lambda: runs.append(boot.run(k, ["sleep", "600"], tmp_path / "r")))
    t.start()
    deadline = time.monotonic() + 30
    while not boot._running and time.monotonic() < deadline:
        time.sleep(0.05)
    boot.stop_all()
    t.join(timeout=30)
    assert not t.is_alive() and runs and runs[0].guest is None and not boot._running
    out = subprocess.run(["pgrep", "-f", f"{FAKE_VNG}.*{tmp_path}"], capture_output=True)
    assert out.stdout == b""  # vng's whole process group went
