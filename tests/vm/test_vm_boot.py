"""``stackfs vm run`` boots a real kernel and runs a reproducer in it (issue 14).

The kernel: ``$STACKFS_VM_TEST_KERNEL`` (anything ``--kernel`` takes), else the first one
``stackfs vm kernels`` lists (the running kernel where its image is readable, else a fetched one:
``stackfs vm fetch bookworm``). Skipped, with the reason, where no kernel image can be booted or
qemu / virtme-ng is missing (``./provision.sh --with vm`` installs them). Without KVM this takes
about a minute or two (software emulation): the guest boots, loads fuse.ko, and three ``cat``
processes race in ``nfs_atomic_open`` on the guest kernel's own FUSE mounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stackfs.vm import boot, kernels

pytestmark = [pytest.mark.mount, pytest.mark.slow, pytest.mark.timeout(900)]


def bootable_kernel() -> kernels.Kernel:
    if os.geteuid() != 0:
        pytest.skip("stackfs vm runs the guest as root: run the tests as root")
    try:
        boot.qemu_path()
        boot.vng_path()
    except boot.VMError as exc:
        pytest.skip(str(exc))
    spec = os.environ.get("STACKFS_VM_TEST_KERNEL")
    if spec:
        return kernels.resolve(spec)
    found = kernels.discover()
    if not found:
        pytest.skip(
            "no kernel image can be booted here: the running kernel's image is not "
            "readable and none is fetched (stackfs vm fetch bookworm), or set "
            "STACKFS_VM_TEST_KERNEL"
        )
    return found[0]


def test_repro_in_the_guest(tmp_path: Path) -> None:
    k = bootable_kernel()
    out = tmp_path / "results"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stackfs",
            "vm",
            "run",
            "--kernel",
            k.image,
            "--results",
            str(out),
            "--timeout",
            "800",
            "--",
            "stackfs",
            "repro",
            "run",
            "nfs-atomic-open",
            "--variant",
            "buggy",
            "--report-dir",
            str(out / "reports"),
            "--json",
            str(out / "repro.json"),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    guest = json.loads((out / "guest.json").read_text())
    assert guest["kernel"] == k.release and guest["status"] == 0
    runs = json.loads((out / "repro.json").read_text())["runs"]
    assert runs and {(r["variant"], r["observed"], r["matched"]) for r in runs} == {
        ("buggy", "oops", True)
    }
    dmesg = (out / "dmesg.txt").read_text()
    assert f"Linux version {k.release}" in dmesg or "fuse" in dmesg


def test_the_kernel_agrees_in_the_guest(tmp_path: Path) -> None:
    """Issue 27: the guest kernel's own detector reports the autofs create deadlock's D task,
    and on a kernel with CONFIG_DETECT_HUNG_TASK_BLOCKER names the i_rwsem owner the watchdog
    inferred (the newest kernel known, unless ``$STACKFS_VM_TEST_KERNEL``)."""
    from stackfs.vm import matrix

    bootable_kernel()  # the skips
    spec = os.environ.get("STACKFS_VM_TEST_KERNEL") or "newest"
    k = kernels.resolve(spec)
    cell = matrix.run_cell(k, ["autofs-create"], tmp_path, timeout=800, variant="buggy", cpus=1)
    assert cell.error is None and len(cell.rows) == 1, cell.error
    (row,) = cell.rows
    assert row.observed == "deadlock" and row.kernel_check.startswith("kernel agrees: "), row
    assert "automountd:" in row.kernel_check
    if kernels.config(k).get("CONFIG_DETECT_HUNG_TASK_BLOCKER") == "y":
        assert "; owner of automountd:" in row.kernel_check
        assert any("likely owned by task" in ln for r in row.kernel_reports for ln in r["lines"])
    report = (Path(row.report_dir) / "report.txt").read_text()
    assert "The kernel's own hung-task detector (khungtaskd, the guest's dmesg):" in report
