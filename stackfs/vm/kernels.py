"""The kernels ``stackfs vm`` can boot, and what ``--kernel K`` means.

Three sources, in this order:

``running``
    the host's running kernel, where its image is readable (``/boot/vmlinuz-RELEASE`` or
    ``/lib/modules/RELEASE/vmlinuz``); its modules are the host's ``/lib/modules/RELEASE``.
``fetched``
    Debian kernel packages unpacked by ``stackfs vm fetch`` under the kernel store
    (``$STACKFS_VM_KERNELS``, default ``/var/cache/stackfs/kernels``): ``RELEASE/boot/vmlinuz-
    RELEASE`` and ``RELEASE/lib/modules/RELEASE`` (virtme-ng links that directory to
    ``/lib/modules/RELEASE`` in the guest, so ``modprobe fuse`` works there).
``boot``
    other images in ``/boot`` with their modules in ``/lib/modules``.

``--kernel`` takes a path to an image, ``running``, a release (``6.1.0-56-amd64``) or a version
prefix (``6.1``, ``6.12``: the newest known release that starts with it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STORE = "/var/cache/stackfs/kernels"
META = "stackfs-kernel.json"


class KernelError(Exception):
    """No such kernel, or it cannot be booted (one line for the user)."""


@dataclass(frozen=True)
class Kernel:
    release: str  # uname -r in the guest
    image: str  # the vmlinuz virtme-ng boots
    moddir: str | None  # its modules (lib/modules/RELEASE), if any
    source: str  # running, fetched, boot or path
    package: str = ""  # Debian package and version, for fetched kernels
    version: str = ""

    @property
    def name(self) -> str:
        return self.release

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def store_dir() -> Path:
    return Path(os.environ.get("STACKFS_VM_KERNELS") or DEFAULT_STORE)


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def _release_key(release: str) -> tuple:
    """Sort key: 6.12.95+deb12-amd64 > 6.1.0-56-amd64 (numbers compared as numbers)."""
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+~]", release))


def running(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Kernel | None:
    release = os.uname().release
    for image in (boot / f"vmlinuz-{release}", modules / release / "vmlinuz"):
        if _readable(image):
            mods = modules / release
            return Kernel(release, str(image), str(mods) if mods.is_dir() else None, "running")
    return None


def fetched(store: Path | None = None) -> list[Kernel]:
    out = []
    root = store or store_dir()
    for meta in sorted(root.glob(f"*/{META}")):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        release = info.get("release", meta.parent.name)
        image = meta.parent / "boot" / f"vmlinuz-{release}"
        mods = meta.parent / "lib" / "modules" / release
        if _readable(image):
            out.append(
                Kernel(
                    release,
                    str(image),
                    str(mods) if mods.is_dir() else None,
                    "fetched",
                    info.get("package", ""),
                    info.get("version", ""),
                )
            )
    return out


def in_boot(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> list[Kernel]:
    out = []
    for image in sorted(boot.glob("vmlinuz-*")):
        release = image.name[len("vmlinuz-") :]
        if _readable(image):
            mods = modules / release
            out.append(Kernel(release, str(image), str(mods) if mods.is_dir() else None, "boot"))
    return out


def discover(store: Path | None = None) -> list[Kernel]:
    """Every bootable kernel: the running one, the fetched ones, the others in /boot."""
    seen: dict[str, Kernel] = {}
    run = running()
    for k in ([run] if run else []) + fetched(store) + in_boot():
        seen.setdefault(k.release, k)
    return list(seen.values())


def from_image(path: Path) -> Kernel:
    """A vmlinuz the user names: its release from the file name or the image's banner."""
    if not _readable(path):
        raise KernelError(f"kernel image {path}: not a readable file")
    release = ""
    if path.name.startswith("vmlinuz-"):
        release = path.name[len("vmlinuz-") :]
    else:
        with open(path, "rb") as f:  # bzImage: the version string is stored uncompressed
            m = re.search(rb"(\d+\.\d+[\w.+\-~]*) \(", f.read(64 * 1024))
        release = m.group(1).decode() if m else path.name
    mods = None
    for cand in (
        path.parent.parent / "lib" / "modules" / release,  # an unpacked package: boot/, lib/
        store_dir() / release / "lib" / "modules" / release,  # the same release, fetched
        Path("/lib/modules") / release,
    ):
        if cand.is_dir():
            mods = str(cand)
            break
    return Kernel(release, str(path), mods, "path")


def resolve(spec: str, store: Path | None = None) -> Kernel:
    """``--kernel SPEC`` -> a kernel; KernelError with the known ones if there is none."""
    spec = spec.strip()
    if not spec:
        raise KernelError("empty kernel name")
    if "/" in spec:
        return from_image(Path(spec))
    known = discover(store)
    if spec in ("running", "host"):
        run = running()
        if run is None:
            raise KernelError(
                f"the running kernel's image (/boot/vmlinuz-{os.uname().release}) is not "
                "readable here; fetch one: stackfs vm fetch bookworm"
            )
        return run
    exact = [k for k in known if k.release == spec]
    if exact:
        return exact[0]
    prefixed = [
        k
        for k in known
        if k.release.startswith(spec) and k.release[len(spec) :][:1] in ("", ".", "-", "+")
    ]
    if prefixed:
        return max(prefixed, key=lambda k: _release_key(k.release))
    names = ", ".join(k.release for k in known) or "none"
    raise KernelError(
        f"no kernel {spec!r} (known: {names}); fetch one with "
        f"`stackfs vm fetch {spec}` or name a vmlinuz path"
    )


def resolve_list(specs: str, store: Path | None = None) -> list[Kernel]:
    """``--kernels K1,K2`` -> kernels (duplicates dropped, order kept)."""
    out: list[Kernel] = []
    for spec in specs.split(","):
        if spec.strip():
            k = resolve(spec, store)
            if k.release not in {o.release for o in out}:
                out.append(k)
    if not out:
        raise KernelError("no kernel named (--kernels K1,K2)")
    return out
