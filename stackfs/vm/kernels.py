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

``--kernel`` takes ``running``, ``newest`` (the newest known release), a release
(``6.1.0-56-amd64``), a version prefix (``6.1``, ``6.12``: the newest known release that starts
with it) or a path: a kernel build tree (``arch/x86/boot/bzImage``, ``.config`` and the modules
built in the tree, which virtme-ng links into the guest's ``/lib/modules`` itself: its
``--run DIR``) or a vmlinuz with its modules (``../lib/modules/RELEASE`` next to the image, the
same release in the store or ``/lib/modules``, or a directory given as ``modules``:
``lib/modules/RELEASE`` itself or an ``INSTALL_MOD_PATH`` holding it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STORE = "/var/cache/stackfs/kernels"
META = "stackfs-kernel.json"
BZIMAGE = "arch/x86/boot/bzImage"


class KernelError(Exception):
    """No such kernel, or it cannot be booted (one line for the user)."""


@dataclass(frozen=True)
class Kernel:
    release: str  # uname -r in the guest
    image: str  # the vmlinuz virtme-ng boots
    moddir: str | None  # its modules (lib/modules/RELEASE), if any
    source: str  # running, fetched, boot, path or tree (a kernel build tree)
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


def from_tree(tree: Path) -> Kernel:
    """A kernel build tree (``make bzImage modules``): virtme-ng boots ``arch/x86/boot/bzImage``
    and links the modules built in the tree (``modules.order``) into the guest itself, so the
    image virtme-ng is given is the tree (``vng --run DIR``, as with ``vng`` in a kernel tree)."""
    bz = tree / BZIMAGE
    if not _readable(bz):
        raise KernelError(f"kernel tree {tree}: no {BZIMAGE} (make bzImage modules)")
    if not (tree / ".config").is_file():
        raise KernelError(f"kernel tree {tree}: no .config")
    rel_file = tree / "include" / "config" / "kernel.release"  # written by kbuild
    release = rel_file.read_text().strip() if rel_file.is_file() else _banner_release(bz)
    mods = str(tree) if (tree / "modules.order").is_file() else None
    return Kernel(release, str(tree.resolve()), mods, "tree")


def _banner_release(image: Path) -> str:
    """The release in a bzImage's version string (stored uncompressed in its setup header)."""
    with open(image, "rb") as f:
        m = re.search(rb"(\d+\.\d+[\w.+\-~]*) \(", f.read(64 * 1024))
    return m.group(1).decode() if m else image.name


def _modules_of(moddir: Path, release: str) -> Path:
    """``lib/modules/RELEASE`` given itself, or an ``INSTALL_MOD_PATH`` that holds it."""
    for cand in (moddir, moddir / "lib" / "modules" / release, moddir / release):
        if (cand / "kernel").is_dir() or (cand / "modules.order").is_file():
            return cand
    raise KernelError(f"modules {moddir}: no lib/modules/{release} with kernel/ in it")


def staged(image: Path, release: str, moddir: Path, store: Path | None = None) -> Path:
    """A vmlinuz and a modules directory from two places, laid out as virtme-ng finds them
    (it takes the modules from ``lib/modules/RELEASE`` beside the image's ``boot/``): two
    symbolic links under the store's ``.paths/RELEASE``; returns the image to boot."""
    root = (store or store_dir()) / ".paths" / release
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    for link, target in (
        (root / "boot" / f"vmlinuz-{release}", image.resolve()),
        (root / "lib" / "modules" / release, moddir.resolve()),
    ):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return root / "boot" / f"vmlinuz-{release}"


def from_path(path: Path, modules: Path | None = None, store: Path | None = None) -> Kernel:
    """A path the user names: a kernel build tree, or a vmlinuz (with ``modules``, its modules
    directory from elsewhere)."""
    if path.is_dir():
        if modules is not None:
            raise KernelError(f"{path} is a kernel tree: its modules are the tree's own")
        return from_tree(path)
    k = from_image(path)
    if modules is None:
        return k
    mods = _modules_of(modules, k.release)
    image = staged(path, k.release, mods, store)
    return Kernel(k.release, str(image), str(mods), "path")


def from_image(path: Path) -> Kernel:
    """A vmlinuz the user names: its release from the file name or the image's banner."""
    if not _readable(path):
        raise KernelError(f"kernel image {path}: not a readable file")
    release = ""
    if path.name.startswith("vmlinuz-"):
        release = path.name[len("vmlinuz-") :]
    else:
        release = _banner_release(path)
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


def resolve(spec: str, store: Path | None = None, modules: Path | None = None) -> Kernel:
    """``--kernel SPEC`` -> a kernel; KernelError with the known ones if there is none.
    ``modules``: the modules directory of a vmlinuz path (``--modules``)."""
    spec = spec.strip()
    if not spec:
        raise KernelError("empty kernel name")
    if "/" in spec:
        return from_path(Path(spec), modules, store)
    known = discover(store)
    if spec == "newest" and known:
        return max(known, key=lambda k: _release_key(k.release))
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


def resolve_list(
    specs: str, store: Path | None = None, modules: Path | None = None
) -> list[Kernel]:
    """``--kernels K1,K2`` -> kernels (duplicates dropped, order kept)."""
    out: list[Kernel] = []
    for spec in specs.split(","):
        if spec.strip():
            k = resolve(spec, store, modules)
            if k.release not in {o.release for o in out}:
                out.append(k)
    if not out:
        raise KernelError("no kernel named (--kernels K1,K2)")
    return out


def config_file(k: Kernel) -> Path | None:
    """The kernel's build configuration: a tree's ``.config``, else ``config-RELEASE`` beside
    the image (Debian's packages ship it in ``boot/``), else the running kernel's
    ``/proc/config.gz`` (``CONFIG_IKCONFIG_PROC``)."""
    image = Path(k.image)
    cands = [image / ".config"] if image.is_dir() else []
    cands += [image.parent / f"config-{k.release}", image.resolve().parent / f"config-{k.release}"]
    if k.source == "running":
        cands.append(Path("/proc/config.gz"))
    return next((c for c in cands if c.is_file()), None)


def config(k: Kernel) -> dict[str, str]:
    """``CONFIG_X`` -> its value (``y``, ``m``, a number) from :func:`config_file`; empty
    when the configuration is not known."""
    path = config_file(k)
    if path is None:
        return {}
    import gzip

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError:
        return {}
    out = {}
    for line in raw.decode(errors="replace").splitlines():
        name, eq, value = line.partition("=")
        if eq and name.startswith("CONFIG_"):
            out[name] = value.strip('"')
    return out
