#!/usr/bin/env python3
"""A stand-in for virtme-ng's ``vng`` in the unit tests: no VM, the "guest" is this host.

It takes the options :func:`stackfs.vm.boot.vng_argv` passes, checks them, and runs the
``--exec`` command with ``sh -c`` in ``--cwd``: the plumbing around the VM (results directory,
exit status, reports, cells) is tested for real; only the boot is left out (the integration
test in test_vm_boot.py boots a real kernel). FAKE_VNG_LOG, if set, gets the argv as JSON.
"""

import argparse
import json
import os
import subprocess
import sys

p = argparse.ArgumentParser()
p.add_argument("--run", required=True)
p.add_argument("--exec", required=True, dest="cmd")
p.add_argument("--cwd", default=".")
p.add_argument("--user")
p.add_argument("--memory")
p.add_argument("--cpus")
p.add_argument("--qemu")
p.add_argument("--rwdir", action="append")
p.add_argument("--overlay-rwdir", action="append")
p.add_argument("--disable-kvm", action="store_true")
args = p.parse_args()
if not os.access(args.run, os.R_OK):
    sys.exit(f"fake vng: {args.run} does not exist")
if os.environ.get("FAKE_VNG_LOG"):
    with open(os.environ["FAKE_VNG_LOG"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
sys.exit(subprocess.run(["sh", "-c", args.cmd], cwd=args.cwd).returncode)
