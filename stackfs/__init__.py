"""stackfs: deadlocks and races of stacked and network filesystems, reproduced on real FUSE mounts.

The package holds the union filesystem (:mod:`stackfs.union`), the kernel models shared by every
testbed daemon (:mod:`stackfs.kernel`), the mount lifecycle (:mod:`stackfs.lifecycle`), the
watchdog (:mod:`stackfs.watchdog`) and the reproducers (:mod:`stackfs.repro`). The FUSE backends
that play AFS, NFS and friends live in the sibling package :mod:`backends`.
"""

__version__ = "0.1.0"
