"""The mount(8) helper: ``mount -t fuse.stackfs`` and fstab lines.

mount(8) runs ``/sbin/mount.fuse.stackfs SOURCE MOUNTPOINT [-sfnv] -o OPTIONS`` for a filesystem
of type ``fuse.stackfs``; this turns that into ``stackfs mount --source SOURCE -o OPTIONS
MOUNTPOINT`` (which returns once the mount is live). SOURCE stays the mount's source in
/proc/mounts, as with any other filesystem (fstests' FUSE support relies on it); ``stackfs
cleanup`` and ``stackfs state`` find the daemon through its run directory::

    mount -t fuse.stackfs stackfs /mnt -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w
    # /etc/fstab
    stackfs  /mnt  fuse.stackfs  lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nofail  0 0

Install it with ``python -m stackfs.union.mount_helper --install`` (writes
``/sbin/mount.fuse.stackfs`` running this interpreter; ``--dir`` for elsewhere,
``--uninstall`` to remove it). The console entry ``mount.fuse.stackfs`` runs :func:`main` too.
"""

from __future__ import annotations

import argparse
import os
import sys

HELPER_NAME = "mount.fuse.stackfs"
DEFAULT_DIR = "/sbin"
_MARK = "# stackfs mount helper"


def parse_helper_args(argv: list[str]) -> tuple[str | None, str, list[str], bool]:
    """``SOURCE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]`` -> (source, mountpoint, options, fake)."""
    pos: list[str] = []
    opts: list[str] = []
    fake = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            if i + 1 >= len(argv):
                raise ValueError("-o needs an argument")
            opts.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("-o"):
            opts.append(a[2:])
        elif a in ("-t",):
            i += 2
            continue
        elif a.startswith("-") and len(a) > 1:
            fake = fake or "f" in a[1:]  # mount -f: fake, do nothing
        else:
            pos.append(a)
        i += 1
    if len(pos) == 1:
        return None, pos[0], opts, fake
    if len(pos) != 2:
        raise ValueError(f"usage: {HELPER_NAME} SOURCE MOUNTPOINT [-o OPTIONS]")
    return pos[0], pos[1], opts, fake


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        source, mountpoint, opts, fake = parse_helper_args(argv)
    except ValueError as exc:
        print(f"{HELPER_NAME}: {exc}", file=sys.stderr)
        return 1
    if fake:
        return 0
    from stackfs import cli

    args = ["mount"]
    if source:
        args += ["--source", source]
    for o in opts:
        args += ["-o", o]
    args.append(mountpoint)
    return cli.main(args)


def script_text(python: str | None = None) -> str:
    return (
        f"#!{python or sys.executable}\n{_MARK}\nimport sys\n\n"
        "from stackfs.union.mount_helper import main\n\nsys.exit(main())\n"
    )


def install(directory: str = DEFAULT_DIR, python: str | None = None) -> str:
    """Write the helper to ``directory/mount.fuse.stackfs``; returns its path."""
    path = os.path.join(directory, HELPER_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(script_text(python))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def uninstall(directory: str = DEFAULT_DIR) -> bool:
    """Remove the helper if it is ours."""
    path = os.path.join(directory, HELPER_NAME)
    try:
        with open(path) as f:
            if _MARK not in f.read(4096):
                return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _cli() -> int:
    p = argparse.ArgumentParser(
        prog="python -m stackfs.union.mount_helper",
        description="Install the mount(8) helper for fuse.stackfs.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--install", action="store_true")
    g.add_argument("--uninstall", action="store_true")
    p.add_argument("--dir", default=DEFAULT_DIR, help="where mount(8) looks (default /sbin)")
    p.add_argument("--python", help="interpreter for the script (default: this one)")
    a = p.parse_args()
    if a.install:
        print(install(a.dir, a.python))
    else:
        print("removed" if uninstall(a.dir) else "not installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
