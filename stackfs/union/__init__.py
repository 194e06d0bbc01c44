"""The aufs-like union filesystem (``stackfs mount``); see :mod:`stackfs.union.fs`."""
