"""The first ``stackfs vm`` command makes the VM ready (issue 26 item 3): qemu and the tools
virtme-ng needs, then a default kernel, each once, each with a line that says what is done.

The packages are provision.sh's own list (``./provision.sh --print-packages --with vm``, so
there is one list), installed with the host's apt-get when qemu is missing; the kernel is the
host's Debian release's (``stackfs vm fetch CODENAME``) when no kernel can be booted. Nothing
is done when both are there; as a non-root user the line says what to run instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import IO

from stackfs.vm import boot, kernels

PROVISION = boot.CHECKOUT / "provision.sh"


def vm_packages() -> list[str]:
    """provision.sh's packages with ``--with vm`` (its base list too: already installed)."""
    proc = subprocess.run(
        [str(PROVISION), "--print-packages", "--with", "vm"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise boot.VMError(f"{PROVISION} --print-packages --with vm: {proc.stderr.strip()}")
    return proc.stdout.split()


def missing(packages: list[str]) -> list[str]:
    """The packages dpkg does not have installed."""
    out = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${db:Status-Status}", pkg], capture_output=True, text=True
        )
        if proc.stdout.strip() != "installed":
            out.append(pkg)
    return out


def install_qemu(stream: IO[str]) -> None:
    """apt-get install provision.sh's VM packages that are missing, saying so."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise boot.VMError(
            f"{boot.QEMU} is not installed; as root: ./provision.sh --with vm "
            "(or apt-get install qemu-system-x86 busybox-static)"
        )
    todo = missing(vm_packages())
    if not todo:
        raise boot.VMError(
            f"{boot.QEMU} is not on PATH although provision.sh's VM packages are installed"
        )
    stream.write(f"stackfs vm: first use: installing {' '.join(todo)} with apt-get (once) ...\n")
    stream.flush()
    t0 = time.monotonic()
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise boot.VMError(f"apt-get install {' '.join(todo)}: {err}")
    stream.write(f"stackfs vm: installed in {time.monotonic() - t0:.0f} s\n")


def fetch_default(stream: IO[str]) -> None:
    """``stackfs vm fetch CODENAME`` (the host's release's kernel), saying so."""
    from stackfs.vm import fetch

    codename = fetch.host_release()
    stream.write(
        f"stackfs vm: first use: no bootable kernel; fetching {codename}'s "
        f"(stackfs vm fetch {codename}) into {kernels.store_dir()} ...\n"
    )
    stream.flush()
    t0 = time.monotonic()
    k = fetch.fetch(codename)
    stream.write(f"stackfs vm: {k.release} ready in {time.monotonic() - t0:.0f} s\n")


def qemu_missing() -> bool:
    """Debian's qemu is not on PATH (a qemu named in $STACKFS_VM_QEMU is the user's own:
    :func:`stackfs.vm.boot.qemu_path` says when it is missing)."""
    return not os.environ.get("STACKFS_VM_QEMU") and shutil.which(boot.QEMU) is None


def ready(stream: IO[str]) -> None:
    """qemu and a bootable kernel, installed and fetched on first use."""
    if qemu_missing():
        install_qemu(stream)
    if not kernels.discover():
        try:
            fetch_default(stream)
        except kernels.KernelError as exc:
            raise boot.VMError(f"no bootable kernel, and fetching one failed: {exc}") from None
    stream.flush()
