"""``stackfs vm kernels|fetch|run|matrix``: the testbed on another kernel (virtme-ng + qemu).

Exit status: ``run`` returns CMD's (124 when --timeout stopped the VM); ``matrix`` 0 when every
row matched its expectation, 1 when not, 2 when a cell produced no result; 2 on a bad command
line, a missing kernel, virtme-ng or qemu.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stackfs.cli import CLIError
from stackfs.vm import boot, kernels, matrix, setup

DEFAULT_OUT = "reports"


def _ready() -> None:
    """qemu and a kernel on first use (:mod:`stackfs.vm.setup`)."""
    try:
        setup.ready(sys.stderr)
    except boot.VMError as exc:
        raise CLIError(str(exc), status=2) from None


def _kernel(spec: str, modules: Path | None = None) -> kernels.Kernel:
    try:
        return kernels.resolve(spec, modules=modules)
    except kernels.KernelError as exc:
        raise CLIError(str(exc), status=2) from None


def cmd_kernels(args: argparse.Namespace) -> int:
    found = kernels.discover()  # only lists: `run` and `matrix` set the VM up on first use
    if args.json:
        print(json.dumps([k.to_json() for k in found], indent=1))
        return 0
    if not found:
        print(
            f"no bootable kernel: the running kernel's image is not readable and none is "
            f"fetched in {kernels.store_dir()}; try: stackfs vm fetch bookworm (the first "
            f"`stackfs vm run` or `matrix` fetches it)"
        )
        return 0
    for k in found:
        pkg = f"  {k.package} {k.version}" if k.package else ""
        mods = "" if k.moddir else "  (no modules: FUSE must be built in)"
        print(f"{k.release:<28} {k.source:<8} {k.image}{pkg}{mods}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from stackfs.vm import fetch

    status = 0
    for spec in args.version:
        t0 = time.monotonic()
        try:
            k = fetch.fetch(spec, force=args.force)
        except kernels.KernelError as exc:
            print(f"stackfs: vm fetch {spec}: {exc}", file=sys.stderr)
            status = 2
            continue
        print(
            f"{spec}: {k.release} ({k.package} {k.version}) in {Path(k.image).parent.parent}"
            f" [{time.monotonic() - t0:.1f} s]"
        )
    return status


def _results_dir(arg: str | None, what: str) -> Path:
    return Path(arg) if arg else Path(DEFAULT_OUT) / f"vm-{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise CLIError("no command: stackfs vm run --kernel K -- CMD [ARG...]", status=2)
    _ready()
    k = _kernel(args.kernel, args.modules)
    results = _results_dir(args.results, k.release)
    try:
        r = boot.run(k, cmd, results, timeout=args.timeout, memory=args.memory, cpus=args.cpus)
    except boot.VMError as exc:
        raise CLIError(str(exc), status=2) from None
    g = r.guest or {}
    boot_s = f", boot to shell {g['boot_to_shell']:.1f} s" if "boot_to_shell" in g else ""
    what = "timed out" if r.timed_out else f"exit {r.status}"
    print(
        f"stackfs vm: {k.release}: {what} after {r.seconds:.1f} s "
        f"({'kvm' if r.kvm else 'TCG, no KVM'}{boot_s}); dmesg: {r.dmesg or 'not saved'}",
        file=sys.stderr,
    )
    return r.status


def _cells(args: argparse.Namespace, ks: list[kernels.Kernel], names: list[str], out: Path):
    """Every (kernel, scenario group) cell, ``--jobs`` VMs at a time; progress as rows finish."""
    from stackfs.vm.progress import Progress, expected_rows

    groups = matrix.split(names, args.jobs, args.variant)
    todo = [
        (k, g, None if len(groups) == 1 else f"part{i + 1}")
        for k in ks
        for i, g in enumerate(groups)
    ]
    total = len(ks) * expected_rows(names, args.variant)
    print(
        f"{len(ks)} kernels x {len(names)} scenarios ({total} rows) in {len(todo)} VMs, "
        f"{min(args.jobs, len(todo))} at a time, {args.cpus} CPU each",
        flush=True,
    )
    prog = Progress(total, sys.stdout, sys.stdout.isatty()).start()

    def one(k: kernels.Kernel, group: list[str], part: str | None) -> matrix.Cell:
        kdir = out / k.release / (part or "")
        kdir.mkdir(parents=True, exist_ok=True)
        prog.watch(kdir, k.release)
        with open(out / f"{k.release}{'-' + part if part else ''}.log", "w") as log:
            return matrix.run_cell(
                k,
                group,
                out,
                timeout=args.timeout,
                variant=args.variant,
                memory=args.memory,
                cpus=args.cpus,
                log=log,
                part=part,
            )

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(one, *t) for t in todo]
        cells = [f.result() for f in futures]
    except BaseException:  # Ctrl-C: no new VM, the running ones stopped, their threads return
        pool.shutdown(wait=False, cancel_futures=True)
        boot.stop_all()
        raise
    finally:
        pool.shutdown(wait=True)
        prog.stop()
    if len(groups) > 1:  # one JUnit file per kernel: its groups' scenario files
        for k in ks:
            parts = sorted((out / k.release).glob("part*/*.junit.xml"))
            if parts:
                matrix.merge_junit(parts, out / k.release / "junit.xml", k.release)
    return cells


def cmd_matrix(args: argparse.Namespace) -> int:
    from stackfs.repro.present import table

    _ready()
    try:
        ks = kernels.resolve_list(args.kernels, modules=args.modules)
        names = matrix.scenario_names(args.scenarios)
    except (kernels.KernelError, KeyError) as exc:
        raise CLIError(str(exc).strip("'\""), status=2) from None
    if args.jobs is None:
        args.jobs = max(1, (os.cpu_count() or 1) // max(1, args.cpus))
    out = _results_dir(args.out, "matrix")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        cells = _cells(args, ks, names, out)
    except boot.VMError as exc:
        raise CLIError(str(exc), status=2) from None
    seconds = time.monotonic() - t0
    for c in cells:
        g = (c.vm.guest or {}) if c.vm else {}
        boot_s = f", boot to shell {g['boot_to_shell']:.1f} s" if "boot_to_shell" in g else ""
        print(
            f"{c.kernel.release}: {', '.join(c.scenarios)}: {len(c.rows)} rows"
            + (f" in {c.vm.seconds:.1f} s{boot_s}" if c.vm is not None else "")
            + (f"; {c.error}" if c.error else "")
        )
        for u in c.kernel_unmatched:
            print(f"  the kernel reported a task of no row: {u}")
    print()
    print(
        table(
            ["kernel", "scenario", "case", "variant", "expected", "observed", "", "time", "kernel"],
            matrix.table_rows(cells),
        )
    )
    matrix.write_json(cells, out / "matrix.json", seconds)
    if args.json:
        matrix.write_json(cells, Path(args.json), seconds)
    print(
        f"\n{sum(len(c.rows) for c in cells)} rows on {len(ks)} kernels in {seconds:.1f} s;"
        f" JSON {out / 'matrix.json'}; JUnit {out}/KERNEL/junit.xml"
    )
    if any(c.error for c in cells):
        return 2
    return 0 if all(c.ok for c in cells) else 1


def _vm_options(p: argparse.ArgumentParser, timeout: float | None, cpus: int = 2) -> None:
    p.add_argument("--memory", default="2G", help="guest memory (qemu -m; default 2G)")
    p.add_argument("--cpus", type=int, default=cpus, help=f"guest CPUs (default {cpus})")
    p.add_argument(
        "--modules",
        type=Path,
        metavar="DIR",
        help="the modules of a vmlinuz path given as the kernel (lib/modules/RELEASE, or an "
        "INSTALL_MOD_PATH holding it); a kernel build tree needs none",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help="stop the VM after S seconds" + (f" (default {timeout:g})" if timeout else ""),
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vm",
        help="run commands and the reproducers on another kernel (virtme-ng + qemu)",
        description="Boot a kernel in seconds with virtme-ng (a copy-on-write view of this "
        "host's root filesystem: the checkout and the venv are there) and run the testbed in "
        "it. Without KVM qemu emulates the CPU. Kernels: the running one where its image is "
        "readable, Debian kernel packages fetched with `stackfs vm fetch`, or a vmlinuz path.",
    )
    vsub = p.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")
    k = vsub.add_parser(
        "kernels",
        help="list the kernels that can be booted",
        description="Kernels that can be booted: release, source, image.",
    )
    k.add_argument("--json", action="store_true", help="as JSON")
    k.set_defaults(func=cmd_kernels)

    f = vsub.add_parser(
        "fetch",
        help="download and unpack a Debian kernel package with its modules",
        description="Fetch a Debian kernel package through the host's apt configuration "
        "(apt-get download; a suite the host's sources lack, such as bookworm-backports, is "
        "read from the host's own mirror with a private apt state) and unpack it with its "
        f"modules into {kernels.DEFAULT_STORE} ($STACKFS_VM_KERNELS).",
    )
    f.add_argument(
        "version",
        nargs="+",
        metavar="VERSION",
        help="a suite (bookworm, bookworm-backports: its newest kernel), a release "
        "(6.1.0-56-amd64), a package (linux-image-...) or a prefix (6.1, 6.12)",
    )
    f.add_argument("--force", action="store_true", help="fetch again even if present")
    f.set_defaults(func=cmd_fetch)

    r = vsub.add_parser(
        "run",
        help="boot a kernel and run a command as root in it",
        description="Boot KERNEL, make FUSE and fusectl ready, run CMD as root in the guest "
        "(the current directory, the checkout and the venv are visible; writes to the checkout "
        "stay in the guest), save the guest's dmesg next to the results, and exit with CMD's "
        "status.",
        epilog="Exit status: that of CMD in the guest (0 when it succeeded); 124 when "
        "--timeout stopped the VM; vng's own status when the guest never ran CMD; 2 on a bad "
        "command line, a missing kernel, virtme-ng or qemu; 130 interrupted (Ctrl-C).",
    )
    r.add_argument(
        "--kernel",
        required=True,
        metavar="K",
        help="a release, a prefix (6.1), 'running', 'newest', a kernel build tree "
        "(arch/x86/boot/bzImage, modules built in the tree) or a vmlinuz path (--modules)",
    )
    r.add_argument(
        "--results",
        metavar="DIR",
        help=f"results directory, shared read-write with the guest "
        f"(default {DEFAULT_OUT}/vm-KERNEL-TIMESTAMP)",
    )
    _vm_options(r, None)
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command")
    r.set_defaults(func=cmd_run)

    m = vsub.add_parser(
        "matrix",
        help="every scenario x variant on each kernel: table, JSON, JUnit",
        description="Run every reproducer scenario (or --scenarios) in every variant on each "
        "kernel (one VM boot per kernel and scenario group) and print kernel x scenario x "
        "variant -> expected, observed, time and the guest kernel's own hung-task detector "
        "on the run (kernel agrees / kernel differs / not the kernel's to see); also "
        "OUT/matrix.json and one JUnit XML per kernel (OUT/KERNEL/junit.xml). --jobs VMs "
        "run at a time, each kernel's scenarios split over them; a line per row as it "
        "finishes (a bar on a terminal). To spread cells over CI jobs give each job its "
        "own --kernels/--scenarios.",
    )
    m.add_argument(
        "--kernels",
        required=True,
        metavar="K1,K2",
        help="comma-separated kernels (releases, prefixes, 'running', 'newest', kernel build "
        "trees, vmlinuz paths)",
    )
    m.add_argument("--scenarios", metavar="S1,S2", help="scenarios (default: all)")
    m.add_argument("--variant", metavar="V", help="one variant only (default: all)")
    m.add_argument(
        "--out",
        metavar="DIR",
        help=f"results directory (default {DEFAULT_OUT}/vm-matrix-TIMESTAMP)",
    )
    m.add_argument("--json", metavar="FILE", help="also write the matrix JSON here")
    _vm_options(m, 7200.0, cpus=1)  # per VM: a full matrix under TCG on a busy machine is slow
    m.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="VMs at a time; each kernel's scenarios are split into N groups of about as many "
        "rows (default: host CPUs / --cpus, at least 1)",
    )
    m.set_defaults(func=cmd_matrix)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
