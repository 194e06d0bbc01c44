#!/usr/bin/env bash
# Install the peers the union benchmark compares stackfs with: fuse-overlayfs and unionfs-fuse
# (the kernel's overlayfs needs only the `overlay` module). Idempotent: does nothing when they
# are there. Run as root on Debian; bench/union_bench.py calls it when a peer is missing.
set -euo pipefail

say() { printf '[setup-peers] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-peers.sh: run me as root" >&2
    exit 1
fi

missing=()
command -v fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
command -v unionfs >/dev/null 2>&1 || command -v unionfs-fuse >/dev/null 2>&1 || missing+=(unionfs-fuse)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    say "fuse-overlayfs and unionfs-fuse present"
fi

if ! grep -qw overlay /proc/filesystems; then
    modprobe overlay 2>/dev/null || true
fi
grep -qw overlay /proc/filesystems || say "warning: the kernel has no overlay filesystem"
[ -c /dev/fuse ] || { echo "setup-peers.sh: /dev/fuse is missing" >&2; exit 1; }
say "fuse-overlayfs: $(fuse-overlayfs --version 2>&1 | head -1)"
say "unionfs-fuse: $(unionfs --version 2>&1 | head -1)"
