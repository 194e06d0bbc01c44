#!/usr/bin/env bash
# The one set-up script of stackfs: run it as root on Debian 12, as often as you like.
# It installs the Debian packages, a virtual environment with stackfs in editable mode, the
# `stackfs` command and the mount helper for mount(8), and mounts the FUSE control filesystem.
# The README, .ci/run and the Vagrant provisioner all call this script.
#
#   sudo ./provision.sh            # everything
#   STACKFS_VENV=/path ./provision.sh   # (STACKFS_BINDIR: where the stackfs command goes)
#   sudo ./provision.sh --with vm  # also qemu for `stackfs vm` (virtme-ng is in the venv always)
#   sudo ./provision.sh --with vagrant   # also what vagrant/ needs on the host (libvirt, qemu, ...)
#   ./provision.sh --print-packages [--with ...]   # the Debian packages, one a line
#   sudo ./provision.sh --packages-only  # only the Debian packages
#   sudo ./provision.sh --deps-only      # the Debian packages and the venv with the project's
#                                        # dependencies, not the project (vagrant/build-box's chroot)
#   ./provision.sh --wheelhouse DIR      # build every wheel the install needs into DIR
#
# pip installs from a wheelhouse when one is there ($STACKFS_WHEELHOUSE, else vagrant/wheels,
# which vagrant/run-tests builds once on the host): offline first, the configured index after.
# In a VM made from vagrant/build-box's box every dependency is already in the venv, so
# provisioning only installs the project (editable, without pip's isolated build environment).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${STACKFS_VENV:-/opt/stackfs-venv}
PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv
          graphviz attr rsync git tar psmisc procps util-linux man-db)
# stackfs vm: qemu (virtme-ng boots kernels with it), busybox for virtme-ng's initramfs,
# kmod (depmod) and file for a fetched kernel's modules and version, udev (the guest finds
# virtme's virtio ports with it, so CMD's exit status comes back), zstd/xz for unpacking
VM_PACKAGES=(qemu-system-x86 busybox-static kmod file udev zstd xz-utils)
VAGRANT_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils
                  debootstrap extlinux fdisk e2fsprogs dnsmasq-base rsync zstd)
WHEELHOUSE=${STACKFS_WHEELHOUSE:-$REPO/vagrant/wheels}
PRINT=0
PACKAGES_ONLY=0
DEPS_ONLY=0
WHEELHOUSE_OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --with)
            case "${2:-}" in
                vm) PACKAGES+=("${VM_PACKAGES[@]}") ;;
                vagrant) PACKAGES+=("${VAGRANT_PACKAGES[@]}") ;;
                *) echo "provision.sh: --with takes vm or vagrant" >&2; exit 2 ;;
            esac
            shift 2 ;;
        --print-packages) PRINT=1; shift ;;
        --packages-only) PACKAGES_ONLY=1; shift ;;
        --deps-only) DEPS_ONLY=1; shift ;;
        --wheelhouse) WHEELHOUSE_OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "provision.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

say() { printf '[provision] %s\n' "$*"; }

PYFUSE3_PATCH=$REPO/patches/pyfuse3-3.5.0-stackfs.patch
# patched_pyfuse3 PYTHON install|wheel [DIR]: pyfuse3 3.5.0 from its source release with
# $PYFUSE3_PATCH, pip-installed into PYTHON's environment, or built as a wheel into DIR
patched_pyfuse3() {
    local py=$1 mode=$2 dir=${3:-} pbuild rc=0
    pbuild=$(mktemp -d)
    if "$py" -m pip download -q --no-deps --no-binary pyfuse3 pyfuse3==3.5.0 \
            -d "$pbuild" >"$pbuild/log" 2>&1 &&
       tar -xzf "$pbuild"/pyfuse3-3.5.0.tar.gz -C "$pbuild" &&
       patch -s -p1 -d "$pbuild/pyfuse3-3.5.0" <"$PYFUSE3_PATCH" >>"$pbuild/log" 2>&1; then
        if [ "$mode" = wheel ]; then
            rm -f "$dir"/pyfuse3-*.whl
            "$py" -m pip wheel -q --no-deps -w "$dir" "$pbuild/pyfuse3-3.5.0" \
                >>"$pbuild/log" 2>&1 || rc=1
        else
            "$py" -m pip install -q --force-reinstall --no-deps "$pbuild/pyfuse3-3.5.0" \
                >>"$pbuild/log" 2>&1 || rc=1
        fi
    else
        rc=1
    fi
    [ "$rc" -eq 0 ] || grep -v '^WARNING: Location' "$pbuild/log" | tail -5 >&2
    rm -rf "$pbuild"
    return "$rc"
}

# --wheelhouse DIR (no root needed): every wheel the install below needs, built once here with
# this host's python and pip configuration (vagrant/run-tests does this for the VM: same Debian
# release and Python, so the guest installs without an index and compiles nothing)
if [ -n "$WHEELHOUSE_OUT" ]; then
    # built once: again only when what decides its contents changed (delete DIR to force it)
    stamp=$WHEELHOUSE_OUT/.complete
    if [ -f "$stamp" ] && [ -z "$(find "$REPO/pyproject.toml" "$REPO/provision.sh" "$REPO/patches" \
                                  -newer "$stamp" -print -quit 2>/dev/null)" ]; then
        say "wheelhouse: $WHEELHOUSE_OUT is up to date (newer than pyproject.toml, provision.sh, patches/)"
        exit 0
    fi
    wvenv=$(mktemp -d)
    /usr/bin/python3 -m venv "$wvenv"
    mkdir -p "$WHEELHOUSE_OUT"
    rc=0
    "$wvenv/bin/python" -m pip download -q -d "$WHEELHOUSE_OUT" pip "setuptools>=61" wheel &&
        "$wvenv/bin/python" -m pip wheel -q -w "$WHEELHOUSE_OUT" "$REPO[test,vm]" &&
        patched_pyfuse3 "$wvenv/bin/python" wheel "$WHEELHOUSE_OUT" || rc=1
    rm -f "$WHEELHOUSE_OUT"/stackfs-*.whl  # the checkout itself is installed editable
    rm -rf "$wvenv"
    if [ "$rc" -eq 0 ]; then
        touch "$stamp"
        say "wheelhouse: $(ls "$WHEELHOUSE_OUT" | wc -l) files in $WHEELHOUSE_OUT"
    fi
    exit "$rc"
fi

if [ "$PRINT" -eq 1 ]; then
    printf '%s\n' "${PACKAGES[@]}" | awk '!seen[$0]++'
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "provision.sh: run me as root (sudo $0)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi
[ "$PACKAGES_ONLY" -eq 0 ] || exit 0

fresh_venv=0
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    /usr/bin/python3 -m venv "$VENV"
    fresh_venv=1
fi
piplog=$(mktemp)
pip_install() { "$VENV/bin/python" -m pip install -q "$@" >>"$piplog" 2>&1; }
have_wheels=0
compgen -G "$WHEELHOUSE/*.whl" >/dev/null && have_wheels=1

if [ "$DEPS_ONLY" -eq 1 ]; then
    # The project's dependencies (pyproject.toml: dependencies, extras test and vm), not the
    # project: vagrant/build-box runs this in the box's chroot, natively, so the box's venv is
    # complete and byte-compiled and a VM's provisioning only installs the project.
    mapfile -t reqs < <(/usr/bin/python3 -c 'import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(*p["dependencies"], *p["optional-dependencies"]["test"],
      *p["optional-dependencies"]["vm"], sep="\n")' "$REPO/pyproject.toml")
    say "installing the dependencies into $VENV: ${reqs[*]}"
    if ! { [ "$have_wheels" -eq 1 ] &&
           pip_install --no-index --find-links "$WHEELHOUSE" --upgrade pip setuptools wheel \
               "${reqs[@]}"; } &&
       ! pip_install --upgrade pip setuptools wheel "${reqs[@]}"; then
        grep -v '^WARNING: Location' "$piplog" >&2
        echo "provision.sh: pip install of the dependencies failed" >&2
        exit 1
    fi
    rm -f "$piplog"
    exit 0
fi

# One installation per checkout, said out loud: the venv's editable install and the command in
# $BINDIR run one checkout; provisioning another clone re-points both (stackfs/launcher.py says
# from where to where; `stackfs --version` names the checkout the command runs)
BINDIR=${STACKFS_BINDIR:-/usr/local/bin}
/usr/bin/python3 "$REPO/stackfs/launcher.py" notes "$BINDIR" "$VENV" "$REPO" |
    while IFS= read -r note; do printf 'provision.sh: note: %s\n' "$note" >&2; done

# Installed already (editable, from this checkout, with this pyproject.toml: .ci/run provisions
# again, and so does every run on a developer's machine)? Then pip has nothing to do: its run
# costs 10 s under TCG even when everything is satisfied.
stamp=$VENV/.stackfs-installed
want="$REPO $(sha256sum <"$REPO/pyproject.toml" | cut -d' ' -f1)"
installed=0
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c 'import json, sys
from importlib.metadata import distribution
url = json.loads(distribution("stackfs").read_text("direct_url.json") or "{}")
sys.exit(url.get("url") != "file://" + sys.argv[1] or not url.get("dir_info", {}).get("editable"))
' "$REPO" 2>/dev/null; then
    installed=2
    say "stackfs is installed (editable) from $REPO and pyproject.toml is unchanged"
else
    rm -f "$stamp"
    say "installing stackfs (editable) into $VENV"
fi
if [ "$installed" -eq 0 ] && [ "$have_wheels" -eq 1 ]; then
    # Wheels built once on the host (vagrant/run-tests): no index, no compiler run in the guest.
    # --no-compile: no byte-compiling of every installed file up front (minutes under TCG);
    # Python compiles what it imports, when it imports it. pip, setuptools and wheel are
    # upgraded only in a venv made just now (a box's venv has the wheelhouse's already). With
    # setuptools >= 64 (PEP 660 editable installs) and wheel in the venv, the project is built
    # with them, not in an isolated build environment that pip would fill again on every run.
    wh=(--no-index --no-compile --find-links "$WHEELHOUSE")
    isolation=()
    if { [ "$fresh_venv" -eq 0 ] || pip_install "${wh[@]}" --upgrade pip setuptools wheel; } &&
       { ! "$VENV/bin/python" -c 'import sys, setuptools, wheel
sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null ||
         isolation=(--no-build-isolation); } &&
       pip_install "${wh[@]}" "${isolation[@]}" -e "$REPO[test,vm]"; then
        installed=1
        say "installed from the wheelhouse $WHEELHOUSE"
    else
        say "the wheelhouse $WHEELHOUSE is incomplete here; using the configured index"
    fi
fi
if [ "$installed" -eq 0 ] && ! { pip_install --upgrade pip && pip_install -e "$REPO[test,vm]"; }; then
    grep -v '^WARNING: Location' "$piplog" >&2
    echo "provision.sh: pip install failed" >&2
    exit 1
fi
rm -f "$piplog"
# One interpreter start (seconds under TCG) checks the install (else exit 1) and whether pyfuse3
# has the patch below (else exit 3).
patched=0
"$VENV/bin/python" -c 'import pyfuse3, trio, stackfs
try:
    pyfuse3.FileInfo(cache_readdir=1)
except Exception:
    raise SystemExit(3)' || patched=$?
[ "$patched" -eq 0 ] || [ "$patched" -eq 3 ] || { echo "provision.sh: install failed" >&2; exit 1; }
[ "$installed" -eq 2 ] || printf '%s\n' "$want" >"$stamp"

# The union's fast paths (issue 15) need two small additions to pyfuse3 (patches/README.md):
# rebuild pyfuse3 from its own source release with the patch, once. Without it the union runs
# with the kernel's slower paths (it detects the missing patch), so a failure here only warns.
if [ "$patched" -eq 3 ]; then
    say "building pyfuse3 3.5.0 from its source release with $PYFUSE3_PATCH"
    if patched_pyfuse3 "$VENV/bin/python" install; then
        say "installed the patched pyfuse3"
    else
        echo "provision.sh: warning: the patched pyfuse3 could not be built; the union" \
             "falls back to the kernel's slower paths" >&2
    fi
fi

# the command: a launcher that runs this checkout and says so when the user running it cannot
# read the checkout (instead of a traceback from the import)
/usr/bin/python3 "$REPO/stackfs/launcher.py" write "$BINDIR" "$VENV" "$REPO" >/dev/null
# man stackfs, man stackfs-VERB: generated from the argument parser (argparse-manpage)
MANDIR=${STACKFS_MANDIR:-/usr/local/share/man}
if "$VENV/bin/python" -m stackfs.manpage "$MANDIR/man1" >/dev/null; then
    # apropos (man -k) reads the index of the manpath entry that man-db keeps for a directory:
    # on Debian /usr/local/man (a symlink to share/man) is listed first and wins, with an index
    # of its own (/var/cache/man/oldlocal); so index every manpath entry that is $MANDIR
    if command -v mandb >/dev/null; then
        realman=$(realpath "$MANDIR")
        for d in $(manpath -q 2>/dev/null | tr ':' ' ') "$MANDIR"; do
            [ "$(realpath "$d" 2>/dev/null)" != "$realman" ] || mandb -q "$d" 2>/dev/null || true
        done
    fi
    say "installed the manual pages (man stackfs) in $MANDIR/man1"
else
    echo "provision.sh: generating the manual pages failed" >&2
    exit 1
fi
if "$VENV/bin/python" -c 'import stackfs.union.mount_helper' 2>/dev/null; then
    "$VENV/bin/python" -m stackfs.union.mount_helper --install >/dev/null && say "installed mount helper for mount -t fuse.stackfs"
fi

if ! grep -q ' /sys/fs/fuse/connections fusectl ' /proc/mounts; then
    modprobe fuse 2>/dev/null || true
    mount -t fusectl none /sys/fs/fuse/connections && say "mounted the FUSE control filesystem"
fi
[ -c /dev/fuse ] || { echo "provision.sh: /dev/fuse is missing (is the fuse module loaded?)" >&2; exit 1; }
say "done: $("$VENV/bin/stackfs" --help >/dev/null && echo 'stackfs is on PATH')"
