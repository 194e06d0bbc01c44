"""``stackfs vm fetch VERSION``: a Debian kernel package and its modules, unpacked for virtme-ng.

Everything goes through the host's own apt configuration (its sources, mirror, proxy and
keyring): ``apt-get download`` of ``linux-image-RELEASE``, then ``dpkg-deb -x`` into the kernel
store and ``depmod``. FUSE is a module in Debian's kernels (``fs/fuse/fuse.ko``), so the modules
matter; no root filesystem is built: the guest sees the host's.

A suite the host's sources do not list (``bookworm-backports`` on a plain bookworm host, ``sid``)
is read from the host's own mirror (:func:`mirror_for`), with a private apt state directory
under the store: the host's ``/etc/apt`` and ``/var/lib/apt`` are never changed. A split kernel
package (sid's since 7.x: ``linux-image-RELEASE`` depends on ``linux-binary-``,
``linux-modules-`` and ``linux-base-RELEASE``, in the usr-merged layout) is fetched with its
parts (:func:`parts`, :func:`usr_merged`).

VERSION is a suite (``bookworm``: its ``linux-image-amd64``; ``bookworm-backports``, ``trixie``,
``trixie-backports``, ``sid``: any suite the host's Debian mirror serves, its newest kernel), a
release (``6.1.0-56-amd64``), a package name (``linux-image-6.1.0-56-amd64``) or a
version prefix (``6.1``, ``6.12``: the newest candidate whose release starts with it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackfs.vm.kernels import META, Kernel, KernelError, fetched, store_dir

META_PACKAGE = "linux-image-amd64"
LISTS_MAX_AGE = 24 * 3600.0


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise KernelError(f"{argv[0]} is not installed (a Debian host: apt, dpkg)") from None


def host_release() -> str:
    """The host's Debian codename (``bookworm``), from /etc/os-release."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    raise KernelError("not a Debian host (no VERSION_CODENAME in /etc/os-release)")


def host_sources() -> list[tuple[str, str]]:
    """(URI, suite) of the host's apt sources with a main component, as apt itself reads them."""
    proc = _run(
        [
            "apt-get",
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE) $(COMPONENT)",
            "Identifier: Packages",
        ]
    )
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "main" and (parts[0], parts[1]) not in out:
            out.append((parts[0].rstrip("/"), parts[1]))
    return out


@dataclass
class Apt:
    """apt-get / apt-cache with the host's configuration, plus private sources if given."""

    suite: str
    options: list[str] = field(default_factory=list)

    def cache(self, *args: str) -> str:
        proc = _run(["apt-cache", *self.options, *args])
        return proc.stdout if proc.returncode == 0 else ""

    def depends(self, package: str) -> list[str]:
        return re.findall(r"^\s+Depends: (\S+)$", self.cache("depends", package), re.M)

    def version(self, package: str) -> str | None:
        m = re.search(r"^Version: (\S+)$", self.cache("show", "--no-all-versions", package), re.M)
        return m.group(1) if m else None

    def download(self, package: str, dest: Path) -> Path:
        proc = _run(
            ["apt-get", *self.options, "-o", "APT::Sandbox::User=root", "download", package],
            cwd=dest,
        )
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            err = (proc.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise KernelError(f"apt-get download {package} ({self.suite}): {err}")
        return debs[-1]


def mirror_for(suite: str, sources: list[tuple[str, str]], codename: str) -> str | None:
    """The host's mirror to read ``suite`` from: the one its sources use for the suite's release
    (``trixie`` for ``trixie-backports``), else the one for the host's own release, since a
    Debian mirror serves every suite (``sid``, ``trixie``, ``trixie-backports``). Security
    suites live on another archive and are never taken for the main one."""
    release = suite.split("-", 1)[0]
    for want in (release, codename):
        for uri, s in sources:
            if s == want:
                return uri
    return None


def apt_for(suite: str, store: Path) -> Apt:
    """The host's apt if its sources list ``suite``; else private sources on the host's mirror."""
    sources = host_sources()
    if any(s == suite for _uri, s in sources):
        return Apt(suite)
    mirror = mirror_for(suite, sources, host_release())
    if mirror is None:
        raise KernelError(f"the host's apt sources have no Debian mirror to read {suite} from")
    state = store / ".apt" / suite
    for d in (state / "lists" / "partial", state / "archives" / "partial", state / "parts"):
        d.mkdir(parents=True, exist_ok=True)
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    signed = f"[signed-by={keyring}] " if keyring.is_file() else ""
    (state / "sources.list").write_text(f"deb {signed}{mirror} {suite} main\n")
    apt = Apt(
        suite,
        [
            "-o",
            f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o",
            f"Dir::Etc::SourceParts={state / 'parts'}",
            "-o",
            f"Dir::State::Lists={state / 'lists'}",
            "-o",
            f"Dir::Cache={state}",
            "-o",
            f"Dir::Cache::Archives={state / 'archives'}",
        ],
    )
    stamp = state / "lists" / ".updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE:
        proc = _run(["apt-get", *apt.options, "-q", "update"])
        if proc.returncode != 0 or not any((state / "lists").glob("*_Packages*")):
            err = (proc.stderr.strip().splitlines() or ["no package lists"])[-1]
            raise KernelError(f"apt-get update for {suite} via {mirror}: {err}")
        stamp.touch()
    return apt


@dataclass(frozen=True)
class Choice:
    apt: Apt
    package: str
    version: str

    @property
    def release(self) -> str:
        return self.package[len("linux-image-") :].removesuffix("-unsigned")


def _candidate(apt: Apt) -> Choice | None:
    for dep in apt.depends(META_PACKAGE):
        if dep.startswith("linux-image-") and (v := apt.version(dep)):
            return Choice(apt, dep, v)
    return None


def choose(spec: str, store: Path) -> Choice:
    """VERSION -> the package to fetch (see the module docstring)."""
    spec = spec.strip()
    codename = host_release()
    suites = [codename, f"{codename}-backports"]
    suites += sorted(  # suites fetched from before (sid, trixie-backports): their lists are here
        d.name
        for d in (store / ".apt").glob("*")
        if (d / "lists").is_dir() and d.name not in suites
    )
    if re.fullmatch(r"[a-z]+(-[a-z]+)*", spec):  # a suite
        c = _candidate(apt_for(spec, store))
        if c is None:
            raise KernelError(f"no {META_PACKAGE} in {spec}")
        return c
    package = spec if spec.startswith("linux-image-") else None
    if package is None and re.fullmatch(r"\d+\.\d+\.\d+.*-\w+", spec):
        package = f"linux-image-{spec}"
    errors = []
    for suite in suites:
        try:
            apt = apt_for(suite, store)
        except KernelError as exc:
            errors.append(str(exc))
            continue
        if package is not None:
            if v := apt.version(package):
                return Choice(apt, package, v)
        elif (c := _candidate(apt)) is not None and (
            c.release.startswith(spec) and c.release[len(spec) :][:1] in (".", "-", "+")
        ):
            return c
    why = f" ({'; '.join(errors)})" if errors else ""
    raise KernelError(f"no Debian kernel package matches {spec!r} in {', '.join(suites)}{why}")


#: the packages a split kernel package (sid since 7.x) depends on for the same release: the
#: image (``usr/lib/modules/RELEASE/vmlinuz``), its modules and its config
SPLIT_PARTS = ("linux-binary-", "linux-modules-", "linux-base-")


def parts(apt: Apt, package: str, release: str) -> list[str]:
    """``linux-image-RELEASE`` and, where it is only a dependency package, its split parts."""
    deps = [
        d for d in apt.depends(package) if d.startswith(SPLIT_PARTS) and d.endswith(f"-{release}")
    ]
    return [package, *deps]


def usr_merged(dest: Path, release: str) -> None:
    """A package of the usr-merged layout (``usr/lib/modules/RELEASE/vmlinuz`` and ``config``)
    seen as the store's (``boot/vmlinuz-RELEASE``, ``boot/config-RELEASE``,
    ``lib/modules/RELEASE``), by symbolic links: virtme-ng, depmod and :mod:`kernels` read
    that."""
    mods = dest / "usr" / "lib" / "modules" / release
    if not (mods / "vmlinuz").is_file() or (dest / "boot" / f"vmlinuz-{release}").exists():
        return
    (dest / "boot").mkdir(exist_ok=True)
    (dest / "boot" / f"vmlinuz-{release}").symlink_to(f"../usr/lib/modules/{release}/vmlinuz")
    if (mods / "config").is_file():
        (dest / "boot" / f"config-{release}").symlink_to(f"../usr/lib/modules/{release}/config")
    if not (dest / "lib").exists():
        (dest / "lib").symlink_to("usr/lib")


def unpack(debs: list[Path], dest: Path, release: str) -> None:
    """dpkg-deb -x of each package, then depmod (Debian's packages ship no modules.dep)."""
    for deb in debs:
        proc = _run(["dpkg-deb", "-x", str(deb), str(dest)])
        if proc.returncode != 0:
            raise KernelError(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()}")
    usr_merged(dest, release)
    if not (dest / "boot" / f"vmlinuz-{release}").is_file():
        raise KernelError(
            f"{', '.join(d.name for d in debs)}: no boot/vmlinuz-{release} "
            f"or usr/lib/modules/{release}/vmlinuz"
        )
    depmod = shutil.which("depmod") or "/sbin/depmod"
    proc = _run([depmod, "-a", "-b", str(dest), release])
    if proc.returncode != 0:
        raise KernelError(f"depmod for {release}: {proc.stderr.strip()} (apt-get install kmod)")


def fetch(spec: str, store: Path | None = None, force: bool = False) -> Kernel:
    """Fetch and unpack VERSION into the store; returns the kernel (already there: no-op)."""
    root = store or store_dir()
    root.mkdir(parents=True, exist_ok=True)
    choice = choose(spec, root)
    target = root / choice.release
    if (target / META).exists() and not force:
        return next(k for k in fetched(root) if k.release == choice.release)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        work = Path(tmp)
        debs = [
            choice.apt.download(p, work) for p in parts(choice.apt, choice.package, choice.release)
        ]
        deb = debs[0]
        tree = work / "tree"
        unpack(debs, tree, choice.release)
        (tree / META).write_text(
            json.dumps(
                {
                    "release": choice.release,
                    "package": choice.package,
                    "version": choice.version,
                    "suite": choice.apt.suite,
                    "deb": deb.name,
                    "debs": [d.name for d in debs],
                    "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
            + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.rename(tree, target)
    return next(k for k in fetched(root) if k.release == choice.release)
