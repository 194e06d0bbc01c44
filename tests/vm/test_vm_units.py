"""``stackfs vm`` without a VM (issue 14): kernel discovery and ``--kernel`` resolution,
argument handling, clear errors when qemu, virtme-ng or a kernel is missing, the guest side,
and the VM plumbing (exit status, results, timeout, pytest reports) through a fake ``vng``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stackfs.vm import boot, kernels, matrix

from .conftest import FAKE_VNG, add_kernel

pytestmark = pytest.mark.timeout(60)


def stackfs(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "stackfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# -- kernels ------------------------------------------------------------------------------------


def test_discovery_and_resolution(store: Path) -> None:
    for r in ("6.1.0-56-amd64", "6.1.0-9-amd64", "6.12.95+deb12-amd64"):
        add_kernel(store, r)
    found = {k.release: k for k in kernels.discover()}
    assert set(found) == {"6.1.0-56-amd64", "6.1.0-9-amd64", "6.12.95+deb12-amd64"}
    k = found["6.1.0-56-amd64"]
    assert k.source == "fetched" and k.package == "linux-image-6.1.0-56-amd64"
    assert k.moddir == str(store / k.release / "lib" / "modules" / k.release)
    # a prefix is the newest release that starts with it; 6.1 is not 6.12
    assert kernels.resolve("6.1").release == "6.1.0-56-amd64"
    assert kernels.resolve("6.12").release == "6.12.95+deb12-amd64"
    assert kernels.resolve("6.1.0-9-amd64").release == "6.1.0-9-amd64"
    assert [k.release for k in kernels.resolve_list("6.12,6.1,6.1.0-56-amd64")] == [
        "6.12.95+deb12-amd64",
        "6.1.0-56-amd64",
    ]
    # a vmlinuz the user names, its modules next to it
    path = kernels.resolve(str(store / "6.1.0-9-amd64" / "boot" / "vmlinuz-6.1.0-9-amd64"))
    assert path.source == "path" and path.release == "6.1.0-9-amd64" and path.moddir


def test_unknown_and_missing_kernels_are_clear(store: Path) -> None:
    with pytest.raises(kernels.KernelError, match=r"no kernel '5.10' \(known: none\); fetch one"):
        kernels.resolve("5.10")
    with pytest.raises(kernels.KernelError, match="not a readable file"):
        kernels.resolve(str(store / "vmlinuz-nothing"))
    with pytest.raises(kernels.KernelError, match="is not readable here"):
        kernels.resolve("running")
    with pytest.raises(kernels.KernelError, match="no kernel named"):
        kernels.resolve_list(" , ")


def test_running_kernel_found_where_its_image_is_readable(tmp_path: Path) -> None:
    release = os.uname().release
    (tmp_path / "boot").mkdir()
    (tmp_path / "modules" / release).mkdir(parents=True)
    assert kernels.running(tmp_path / "boot", tmp_path / "modules") is None
    (tmp_path / "boot" / f"vmlinuz-{release}").write_bytes(b"x")
    k = kernels.running(tmp_path / "boot", tmp_path / "modules")
    assert k is not None and k.source == "running" and k.moddir.endswith(release)


# -- command line ---------------------------------------------------------------------------------


def test_cli_arguments_and_errors(store: Path, fake_vm: dict[str, str]) -> None:
    env = {"STACKFS_VM_KERNELS": str(store)}
    res = stackfs("vm", "kernels", env=env)
    assert res.returncode == 0  # (this host's /boot may list kernels too)
    add_kernel(store, "6.1.0-56-amd64")
    res = stackfs("vm", "kernels", "--json", env=env)
    assert "6.1.0-56-amd64" in [k["release"] for k in json.loads(res.stdout)]
    res = stackfs("vm", "run", "--kernel", "9.9", "--", "true", env=env)
    assert res.returncode == 2 and "no kernel '9.9'" in res.stderr and "vm fetch" in res.stderr
    res = stackfs("vm", "run", "--kernel", "6.1", env=env)
    assert res.returncode == 2 and "no command" in res.stderr
    res = stackfs("vm", "run", "--", "true", env=env)
    assert res.returncode == 2 and "--kernel" in res.stderr
    res = stackfs("vm", "matrix", "--kernels", "6.1", "--scenarios", "no-such", env=env)
    assert res.returncode == 2 and "unknown scenario no-such" in res.stderr
    res = stackfs(
        "vm",
        "run",
        "--kernel",
        "6.1",
        "--",
        "true",
        env={**env, "STACKFS_VM_QEMU": "qemu-system-nowhere"},
    )
    assert res.returncode == 2
    assert "stackfs: qemu-system-x86_64 is not installed (./provision.sh --with vm" in res.stderr


def test_missing_virtme_ng_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STACKFS_VM_VNG", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(boot.VMError, match="virtme-ng is not installed"):
        boot.vng_path()


def test_vng_command_line(store: Path, fake_vm: dict[str, str], tmp_path: Path) -> None:
    k = kernels.Kernel("6.1.0-56-amd64", str(add_kernel(store, "6.1.0-56-amd64")), None, "path")
    argv = boot.vng_argv(k, ["stackfs", "repro", "list"], tmp_path, kvm=False, cwd=tmp_path)
    assert argv[:3] == [str(FAKE_VNG), "--run", k.image]
    assert "--disable-kvm" in argv and argv[argv.index("--user") + 1] == "root"
    assert argv[argv.index("--rwdir") + 1] == str(tmp_path)
    assert argv[argv.index("--overlay-rwdir") + 1] == str(boot.CHECKOUT)
    assert argv[-2] == "--exec" and "--timeout-factor" in argv[-1]
    assert "-m stackfs.vm.guest --results" in argv[-1] and len(argv[-1]) < 300
    # CMD travels in a file: the kernel command line (virtme-ng's --exec) holds about 2 KiB
    assert json.loads((tmp_path / "cmd.json").read_text()) == ["stackfs", "repro", "list"]
    assert "--disable-kvm" not in boot.vng_argv(k, ["true"], tmp_path, kvm=True)


# -- the guest side and the VM plumbing (fake vng) ----------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the guest side runs as root (modprobe, mount)")
def test_guest_side_status_dmesg_and_record(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackfs.vm.guest",
            "--results",
            str(tmp_path),
            "--",
            "sh",
            "-c",
            "test -c /dev/fuse && exit 3",
        ],
        timeout=60,
    )
    assert res.returncode == 3
    rec = json.loads((tmp_path / "guest.json").read_text())
    assert rec["status"] == 3 and rec["kernel"] == os.uname().release and rec["setup_error"] is None
    assert (tmp_path / "dmesg.txt").exists()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackfs.vm.guest",
            "--results",
            str(tmp_path),
            "--",
            "no-such-command-here",
        ],
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 127 and "command not found" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the guest side runs as root (modprobe, mount)")
def test_run_returns_the_commands_status(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    add_kernel(store, "6.1.0-56-amd64")
    out = tmp_path / "results"
    res = stackfs(
        "vm",
        "run",
        "--kernel",
        "6.1",
        "--results",
        str(out),
        "--",
        "sh",
        "-c",
        "echo in-guest; exit 7",
    )
    assert res.returncode == 7, res.stderr
    assert "in-guest" in res.stdout
    assert "6.1.0-56-amd64: exit 7" in res.stderr and "TCG" in res.stderr or "kvm" in res.stderr
    assert json.loads((out / "guest.json").read_text())["cmd"] == [
        "sh",
        "-c",
        "echo in-guest; exit 7",
    ]
    assert (out / "dmesg.txt").exists()


def test_a_vm_that_does_not_finish_is_stopped(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    k = kernels.resolve(str(add_kernel(store, "6.1.0-56-amd64")))
    r = boot.run(k, ["sleep", "600"], tmp_path / "r", timeout=1.0)
    assert r.timed_out and r.status == 124 and r.guest is None
    out = subprocess.run(["pgrep", "-f", f"{FAKE_VNG}.*{tmp_path}"], capture_output=True)
    assert out.stdout == b""  # the whole process group went


def test_matrix_rows_table_and_junit(tmp_path: Path) -> None:
    data = {
        "runs": [
            {
                "scenario": "nfs-atomic-open",
                "case": "nfs",
                "variant": "buggy",
                "expected": "oops",
                "observed": "oops",
                "matched": True,
                "total_seconds": 2.5,
            },
            {
                "scenario": "nfs-atomic-open",
                "case": "nfs",
                "variant": "fixed",
                "expected": "completes",
                "observed": "oops",
                "matched": False,
                "total_seconds": 1,
            },
        ]
    }
    rows = matrix.rows_of("6.1.0-56-amd64", data)
    assert [(r.variant, r.matched) for r in rows] == [("buggy", True), ("fixed", False)]
    k = kernels.Kernel("6.1.0-56-amd64", "/x", None, "path")
    cell = matrix.Cell(k, ["nfs-atomic-open"], rows, None)
    assert not cell.ok
    assert matrix.table_rows([cell])[1][5:7] == ["oops", "MISMATCH"]
    for name in ("a", "b"):
        (tmp_path / f"{name}.xml").write_text(
            f'<testsuites><testsuite name="stackfs repro run {name}" tests="2" failures="1" '
            f'errors="0" skipped="0"><testcase name="t"/></testsuite></testsuites>'
        )
    matrix.merge_junit([tmp_path / "a.xml", tmp_path / "b.xml"], tmp_path / "j.xml", k.release)
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "4" and root.get("failures") == "2"
    assert [ts.get("name") for ts in root] == [
        "6.1.0-56-amd64: stackfs repro run a",
        "6.1.0-56-amd64: stackfs repro run b",
    ]
    with pytest.raises(KeyError, match="unknown scenario nope"):
        matrix.scenario_names("nfs-atomic-open,nope")
    assert "nfs-atomic-open" in matrix.scenario_names()


@pytest.mark.skipif(os.geteuid() != 0, reason="the guest side runs as root (modprobe, mount)")
def test_pytest_option_runs_tests_in_the_vm_and_reports_on_the_host(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    add_kernel(store, "6.1.0-56-amd64")
    add_kernel(store, "6.12.95+deb12-amd64")
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent("""\
        import os

        def test_in_guest():
            assert os.environ.get("STACKFS_VM_GUEST") == "1"

        def test_fails():
            assert 1 == 2
    """)
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--stackfs-kernel",
            "6.1,6.12",
            "test_mine.py",
            "--junitxml",
            "j.xml",
            "-v",
            "-o",
            "addopts=",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "STACKFS_VM_KERNELS": str(store)},
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "test_mine.py::test_in_guest@6.1.0-56-amd64 PASSED" in res.stdout
    assert "test_mine.py::test_fails@6.12.95+deb12-amd64 FAILED" in res.stdout
    assert "2 failed, 2 passed" in res.stdout
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    assert len(list(cases)) == 4
    assert len(Path(fake_vm["FAKE_VNG_LOG"]).read_text().splitlines()) == 2  # one boot a kernel


@pytest.mark.mount
@pytest.mark.timeout(180)
def test_matrix_cells_with_two_xdist_workers(
    store: Path, fake_vm: dict[str, str], tmp_path: Path
) -> None:
    """Two cells (two kernels x nfs-atomic-open, fixed variant) on two pytest-xdist workers:
    each cell really runs the scenario (here, with the fake vng, on this host's kernel)."""
    add_kernel(store, "6.1.0-56-amd64")
    add_kernel(store, "6.12.95+deb12-amd64")
    out = tmp_path / "cells"
    env = {
        **os.environ,
        "STACKFS_VM_KERNELS": str(store),
        "STACKFS_VM_MATRIX_KERNELS": "6.1,6.12",
        "STACKFS_VM_MATRIX_SCENARIOS": "nfs-atomic-open",
        "STACKFS_VM_MATRIX_VARIANT": "fixed",
        "STACKFS_VM_MATRIX_OUT": str(out),
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "-v",
            "-o",
            "addopts=",
            str(Path(__file__).with_name("test_vm_matrix_cells.py")),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "created: 2/2 workers" in res.stdout and "2 passed" in res.stdout
    for release in ("6.1.0-56-amd64", "6.12.95+deb12-amd64"):
        kdir = out / "nfs-atomic-open" / release
        runs = json.loads((kdir / "nfs-atomic-open.json").read_text())["runs"]
        assert {(r["variant"], r["matched"]) for r in runs} == {("fixed", True)}
        assert ET.parse(kdir / "junit.xml").getroot().get("failures") == "0"
