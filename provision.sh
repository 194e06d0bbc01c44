#!/usr/bin/env bash
# The one set-up script of stackfs: run it as root on Debian 12, as often as you like.
# It installs the Debian packages, a virtual environment with stackfs in editable mode, the
# `stackfs` command and the mount helper for mount(8), and mounts the FUSE control filesystem.
# The README, .ci/run and the Vagrant provisioner all call this script.
#
#   sudo ./provision.sh            # everything
#   STACKFS_VENV=/path ./provision.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${STACKFS_VENV:-/opt/stackfs-venv}
PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv
          graphviz attr rsync git tar psmisc procps util-linux)

say() { printf '[provision] %s\n' "$*"; }

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

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
say "installing stackfs (editable) into $VENV"
piplog=$(mktemp)
if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
       "$VENV/bin/python" -m pip install -q -e "$REPO[test]"; } >"$piplog" 2>&1; then
    grep -v '^WARNING: Location' "$piplog" >&2
    echo "provision.sh: pip install failed" >&2
    exit 1
fi
rm -f "$piplog"
"$VENV/bin/python" -c 'import pyfuse3, trio, stackfs' || { echo "provision.sh: install failed" >&2; exit 1; }

ln -sf "$VENV/bin/stackfs" /usr/local/bin/stackfs
if "$VENV/bin/python" -c 'import stackfs.union.mount_helper' 2>/dev/null; then
    "$VENV/bin/python" -m stackfs.union.mount_helper --install >/dev/null && say "installed mount helper for mount -t fuse.stackfs"
fi

if ! grep -q ' /sys/fs/fuse/connections fusectl ' /proc/mounts; then
    modprobe fuse 2>/dev/null || true
    mount -t fusectl none /sys/fs/fuse/connections && say "mounted the FUSE control filesystem"
fi
[ -c /dev/fuse ] || { echo "provision.sh: /dev/fuse is missing (is the fuse module loaded?)" >&2; exit 1; }
say "done: $("$VENV/bin/stackfs" --help >/dev/null && echo 'stackfs is on PATH')"
