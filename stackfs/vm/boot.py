"""One VM run: boot a kernel with virtme-ng, run a command as root in it, return its status.

The guest sees the host's root filesystem copy-on-write (virtme-ng's default), so the checkout
and the installed venv are there at the same paths; the checkout is an overlay the guest may
write (reports, caches) without touching the host's files, and the results directory is shared
read-write. The command runs under :mod:`stackfs.vm.guest` (FUSE and fusectl ready, dmesg and
``guest.json`` saved in the results directory). Without KVM (no ``/dev/kvm``, or a CPU without
vmx/svm) qemu emulates the CPU: ``--disable-kvm``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stackfs.vm.hungtask import kernel_timeout
from stackfs.vm.kernels import Kernel

CHECKOUT = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"


class VMError(Exception):
    """The VM cannot be started here (one line for the user)."""


def kvm_usable() -> bool:
    """KVM works only with /dev/kvm read-writable and a CPU that shows vmx or svm."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "vmx" in flags or "svm" in flags


def vng_path() -> str:
    """virtme-ng's ``vng``: $STACKFS_VM_VNG, next to this Python, or on PATH."""
    env = os.environ.get("STACKFS_VM_VNG")
    if env:
        return env
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return str(here)
    found = shutil.which("vng")
    if found is None:
        raise VMError(
            "virtme-ng is not installed (it is the `vm` extra: ./provision.sh "
            "installs it; or pip install virtme-ng)"
        )
    return found


def qemu_path() -> str:
    found = shutil.which(os.environ.get("STACKFS_VM_QEMU") or QEMU)
    if found is None:
        raise VMError(
            f"{QEMU} is not installed (./provision.sh --with vm, or "
            "apt-get install qemu-system-x86)"
        )
    return found


#: time limits in a guest without KVM (STACKFS_TIMEOUT_FACTOR: pytest-timeout, daemon start-up)
TCG_TIMEOUT_FACTOR = 5


def timeout_factor(kvm: bool) -> str:
    return os.environ.get("STACKFS_TIMEOUT_FACTOR") or ("1" if kvm else str(TCG_TIMEOUT_FACTOR))


#: the watchdog's default hung-task threshold (``stackfs watchdog``, a scenario's default)
WATCHDOG_THRESHOLD = 1.0


def hung_task_secs(factor: str, threshold: float = WATCHDOG_THRESHOLD) -> int:
    """The guest kernel's ``hung_task_timeout_secs`` for the watchdog's threshold on this
    guest (``threshold`` times the timeout factor): :func:`stackfs.vm.hungtask.kernel_timeout`."""
    return kernel_timeout(threshold * float(factor))


def guest_argv(cmd: list[str], results: Path, factor: str = "1") -> list[str]:
    """The guest side (:mod:`stackfs.vm.guest`); CMD goes in ``results/cmd.json``: virtme-ng
    carries ``--exec`` on the kernel command line, which a long CMD would overflow (the kernel
    BUG()s in early boot past about 2 KiB)."""
    (results / "cmd.json").write_text(json.dumps(cmd) + "\n")
    return [
        sys.executable,
        "-m",
        "stackfs.vm.guest",
        "--results",
        str(results),
        "--timeout-factor",
        factor,
        "--hung-task-secs",
        str(hung_task_secs(factor)),
        "--cmd-file",
        str(results / "cmd.json"),
    ]


def vng_argv(
    kernel: Kernel,
    cmd: list[str],
    results: Path,
    *,
    kvm: bool,
    memory: str = "2G",
    cpus: int = 2,
    cwd: Path | None = None,
    qemu: str | None = None,
) -> list[str]:
    """The ``vng`` command line of one run (see the module docstring)."""
    argv = [
        vng_path(),
        "--run",
        kernel.image,
        "--user",
        "root",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        "--overlay-rwdir",
        str(CHECKOUT),
        "--rwdir",
        str(results),
        "--cwd",
        str(cwd or Path.cwd()),
    ]
    if qemu:
        argv += ["--qemu", qemu]
    if not kvm:
        argv.append("--disable-kvm")
    argv += ["--exec", shlex.join(guest_argv(cmd, results, timeout_factor(kvm)))]
    return argv


@dataclass
class VMRun:
    kernel: Kernel
    status: int  # CMD's exit status (or vng's when the guest never ran CMD)
    seconds: float  # wall time, boot to power-off
    results: Path
    guest: dict | None  # guest.json: kernel release, status, boot_to_shell, ...
    timed_out: bool = False
    kvm: bool = False

    @property
    def dmesg(self) -> Path | None:
        p = self.results / "dmesg.txt"
        return p if p.exists() else None

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel.to_json(),
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "results": str(self.results),
            "guest": self.guest,
            "timed_out": self.timed_out,
            "kvm": self.kvm,
            "dmesg": str(self.dmesg) if self.dmesg else None,
        }


#: the VMs this process started and has not yet seen exit (``stop_all``)
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def stop_all() -> None:
    """Stop every VM this process is still running (an interrupted ``matrix``: its VMs run in
    worker threads, which then return)."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the VM we started: SIGTERM to vng's process group (virtme-run and qemu are in it),
    then SIGKILL to whatever of the group is left, even once vng itself has exited."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.5)  # qemu shuts down on SIGTERM; anything still there now is killed
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10.0)


def run(
    kernel: Kernel,
    cmd: list[str],
    results: Path,
    *,
    timeout: float | None = None,
    memory: str = "2G",
    cpus: int = 2,
    cwd: Path | None = None,
    output: IO[str] | None = None,
) -> VMRun:
    """Boot ``kernel``, run ``cmd`` as root in the guest, wait (at most ``timeout`` s)."""
    if not cmd:
        raise VMError("no command to run in the guest")
    if not os.path.exists(kernel.image):
        raise VMError(f"kernel image {kernel.image} is missing")
    qemu = qemu_path()
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    (results / "guest.json").unlink(missing_ok=True)
    kvm = kvm_usable()
    argv = vng_argv(kernel, cmd, results, kvm=kvm, memory=memory, cpus=cpus, cwd=cwd, qemu=qemu)
    env = dict(os.environ)
    env["PATH"] = f"{Path(argv[0]).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    (results / "vng-argv.json").write_text(json.dumps(argv, indent=1) + "\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )
    with _running_lock:
        _running.add(proc)
    timed_out = False
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
        status = 124
    except BaseException:
        _stop(proc)
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
    guest = None
    gj = results / "guest.json"
    if gj.exists():
        try:
            guest = json.loads(gj.read_text())
        except ValueError:
            guest = None
    if guest is not None and not timed_out:
        status = int(guest["status"])
    return VMRun(kernel, status, time.monotonic() - t0, results, guest, timed_out, kvm)
