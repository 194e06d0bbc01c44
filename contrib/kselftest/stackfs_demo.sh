#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# The stackfs demo as a kselftest: every reproducer of the seed bugs (stacked, network and
# cluster filesystem deadlocks and races) in every variant, each on a stack of real FUSE
# mounts, judged by the watchdog; the results in KTAP (`stackfs demo --ktap -`) on stdout,
# the demo's own report on stderr. Exit status: kselftest's (0 pass, 1 fail, 4 skip; 2 a
# set-up error, which runner.sh reports as "not ok ... # exit=2"). See docs/kselftest.md.
#
# Environment:
#   STACKFS             the stackfs command (default: stackfs on PATH, else
#                       /opt/stackfs-venv/bin/stackfs, where provision.sh installs it)
#   STACKFS_REPORT_DIR  where the runs' reports go (default: a new directory in ${TMPDIR:-/tmp})
# Arguments are passed on to `stackfs demo` (runner.sh: KSELFTEST_STACKFS_DEMO_SH_ARGS).

ksft_skip=4

skip()
{
	echo "KTAP version 1"
	echo "1..0 # SKIP $1"
	exit $ksft_skip
}

[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts)"
[ -c /dev/fuse ] || skip "/dev/fuse is missing (modprobe fuse)"
stackfs=${STACKFS:-$(command -v stackfs || echo /opt/stackfs-venv/bin/stackfs)}
[ -x "$stackfs" ] || skip "stackfs is not installed (provision.sh, or set STACKFS)"
reports=${STACKFS_REPORT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/stackfs-kselftest.XXXXXX")} || {
	echo "stackfs_demo.sh: cannot create a report directory" >&2
	exit 1
}
echo "# stackfs demo: reports in $reports" >&2
exec "$stackfs" --ascii demo --ktap - --report-dir "$reports" "$@"
