"""``stackfs vm``: run the testbed on another kernel in seconds (issue 14).

Built on virtme-ng (``vng``): it boots a kernel image under qemu with a copy-on-write view of the
host's root filesystem, so the checkout, the venv and every tool are there without building a
root filesystem; without KVM qemu emulates the CPU (TCG).

- :mod:`stackfs.vm.kernels`: which kernels can be booted (discovery, ``--kernel`` resolution)
- :mod:`stackfs.vm.fetch`: a Debian kernel package with its modules, through the host's apt
- :mod:`stackfs.vm.boot`: one VM run of a command (``vng`` argv, exit status, timeout)
- :mod:`stackfs.vm.guest`: the guest side: FUSE and fusectl ready, CMD, dmesg saved
- :mod:`stackfs.vm.matrix`: every scenario x variant on each kernel; table, JSON, JUnit
- :mod:`stackfs.vm.hungtask`: the guest kernel's own hung-task detector, cross-checked per row
- :mod:`stackfs.vm.progress`: the matrix's line per finished row (a bar on a terminal)
- :mod:`stackfs.vm.setup`: the first ``stackfs vm`` command installs qemu, fetches a kernel
- :mod:`stackfs.vm.pytest_vm`: ``pytest --stackfs-kernel K`` runs the selected tests in the VM
- :mod:`stackfs.vm.cli`: the ``stackfs vm`` subcommands
"""
