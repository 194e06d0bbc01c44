"""stackfs: deadlocks and races of stacked and network filesystems, reproduced on real FUSE mounts.

The package holds the union filesystem (:mod:`stackfs.union`), the kernel models shared by every
testbed daemon (:mod:`stackfs.kernel`), the daemon runtime and a run's lifecycle
(:mod:`stackfs.runtime`), the watchdog (:mod:`stackfs.watchdog`) and the reproducers
(:mod:`stackfs.repro`). The FUSE backends that play AFS, NFS and friends, and the service daemons
they need (the lock manager, the automount daemon), live in the sibling package :mod:`backends`.
"""

__version__ = "0.1.0"
