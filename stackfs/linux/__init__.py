"""The one Linux layer: what the testbed asks of the kernel outside Python's ``os`` module.

* :mod:`~stackfs.linux.libc` is the one ctypes handle on the C library and the few calls ``os``
  does not offer (``renameat2`` with flags, ``fchownat``/``utimensat``/``linkat`` with
  ``AT_EMPTY_PATH``, ``umount2``, ``prctl``);
* :mod:`~stackfs.linux.syscalls` is the one system-call table (x86_64 and aarch64: number ->
  name, and which arguments name a file);
* :mod:`~stackfs.linux.proc` reads ``/proc``: whether a process is alive, its comm, a string in
  its memory (``read_cstring``), the system call a task is blocked in.

Everything else (the watchdog, the union, the backends, the repro runner) calls these.
"""
