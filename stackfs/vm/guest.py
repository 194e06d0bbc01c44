"""The guest side of ``stackfs vm run``: ``python -m stackfs.vm.guest --results DIR -- CMD...``
(or ``--cmd-file DIR/cmd.json``: virtme-ng passes the command on the kernel command line, which
holds about 2 KiB, so the host writes a long CMD to the shared directory instead).

Runs as root inside the virtme-ng guest (the host's root filesystem, copy-on-write): makes FUSE
ready the way provision.sh does on a host (``modprobe fuse``, the fusectl filesystem on
/sys/fs/fuse/connections), sets the kernel's own hung-task detector to the watchdog's threshold
(``--hung-task-secs``, :mod:`stackfs.vm.hungtask`), runs CMD, then saves the guest's kernel
log (``dmesg``) and a ``guest.json`` (kernel release, CMD, exit status, seconds) in DIR, a
directory shared with the host read-write. Exits with CMD's status (127: CMD not found; 125:
FUSE could not be set up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FUSECTL = "/sys/fs/fuse/connections"
EXIT_SETUP = 125

#: set in the guest's environment: the pytest plugin and tests know they are in the VM
GUEST_ENV = "STACKFS_VM_GUEST"


def _mounted(fstype: str, where: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1:3] == [where, fstype] for line in f)


def fuse_ready() -> str | None:
    """modprobe fuse and mount fusectl; None when ready, else why not."""
    if not os.path.exists("/dev/fuse") or not os.path.isdir(FUSECTL):
        subprocess.run(["modprobe", "fuse"], capture_output=True)
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing after modprobe fuse (no fuse module for this kernel?)"
    if not _mounted("fusectl", FUSECTL):
        proc = subprocess.run(
            ["mount", "-t", "fusectl", "none", FUSECTL], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return f"mount -t fusectl: {proc.stderr.strip()}"
    return None


def in_virtme_guest(cmdline: Path = Path("/proc/cmdline")) -> bool:
    """Whether this is a kernel virtme-ng booted (its options on the kernel command line), not
    a host the guest side runs on (the unit tests' stand-in ``vng``)."""
    try:
        return "virtme_hostname=" in cmdline.read_text()
    except OSError:
        return False


def hung_task_detector(timeout: int) -> dict[str, str | None]:
    """Set ``khungtaskd`` up (:func:`stackfs.vm.hungtask.sysctls`); each /proc/sys/kernel file
    -> the value now in it, None where this kernel has no such file (the check interval before
    4.19; no ``CONFIG_DETECT_HUNG_TASK``). Only in a virtme-ng guest: a host's detector (a
    shared machine's) is left as it is."""
    from stackfs.vm.hungtask import sysctls

    if not in_virtme_guest():
        return {"skipped": "not a virtme-ng guest: the host's detector is left alone"}
    out: dict[str, str | None] = {}
    for name, value in sysctls(timeout).items():
        path = Path("/proc/sys/kernel") / name
        try:
            path.write_text(value + "\n")
            out[name] = path.read_text().strip()
        except OSError:
            out[name] = None
    return out


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def save_dmesg(results: Path) -> None:
    proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    (results / "dmesg.txt").write_text(proc.stdout or proc.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stackfs.vm.guest", description=__doc__)
    p.add_argument("--results", required=True, type=Path, help="shared results directory")
    p.add_argument(
        "--timeout-factor",
        metavar="F",
        help="STACKFS_TIMEOUT_FACTOR for CMD (a guest under software emulation)",
    )
    p.add_argument(
        "--cmd-file",
        type=Path,
        metavar="FILE",
        help="CMD as a JSON list (the kernel command line that carries --exec is short)",
    )
    p.add_argument(
        "--hung-task-secs",
        type=int,
        metavar="N",
        help="kernel.hung_task_timeout_secs for the kernel's own detector (check interval 1 s)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.cmd_file is not None:
        cmd = json.loads(args.cmd_file.read_text()) + cmd
    if not cmd:
        p.error("no command (-- CMD...)")
    args.results.mkdir(parents=True, exist_ok=True)
    os.environ[GUEST_ENV] = "1"
    if args.timeout_factor:
        os.environ.setdefault("STACKFS_TIMEOUT_FACTOR", args.timeout_factor)
    venv_bin = os.path.dirname(sys.executable)
    os.environ["PATH"] = f"{venv_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    t0 = time.monotonic()
    booted = _uptime()  # seconds from the guest kernel's start to this shell
    hung_task = hung_task_detector(args.hung_task_secs) if args.hung_task_secs else {}
    why = fuse_ready()
    if why is not None:
        print(f"stackfs vm guest: {why}", file=sys.stderr)
        status = EXIT_SETUP
    else:
        try:
            status = subprocess.run(cmd).returncode
        except FileNotFoundError:
            print(f"stackfs vm guest: {cmd[0]}: command not found", file=sys.stderr)
            status = 127
        if status < 0:  # killed by a signal: the shell's convention
            status = 128 - status
    save_dmesg(args.results)
    (args.results / "guest.json").write_text(
        json.dumps(
            {
                "kernel": os.uname().release,
                "cmd": cmd,
                "status": status,
                "setup_error": why,
                "hung_task": hung_task,
                "seconds": round(time.monotonic() - t0, 3),
                "boot_to_shell": booted,
                "uptime": _uptime(),
            },
            indent=1,
        )
        + "\n"
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
