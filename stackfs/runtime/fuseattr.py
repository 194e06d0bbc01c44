"""``struct stat`` to FUSE attributes: one converter for every testbed filesystem."""

from __future__ import annotations

import os

import pyfuse3


def entry_attributes(
    st: os.stat_result,
    ino: int,
    entry_timeout: float,
    attr_timeout: float,
    nlink: int | None = None,
) -> pyfuse3.EntryAttributes:
    """The reply to LOOKUP/GETATTR for an object with attributes ``st`` and inode ``ino``
    (``fuse_fill_attr``'s counterpart on the daemon side). ``nlink`` overrides ``st_nlink``."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.generation = 0
    a.entry_timeout = entry_timeout
    a.attr_timeout = attr_timeout
    a.st_mode = st.st_mode
    a.st_nlink = st.st_nlink if nlink is None else nlink
    a.st_uid = st.st_uid
    a.st_gid = st.st_gid
    a.st_rdev = st.st_rdev
    a.st_size = st.st_size
    a.st_blksize = st.st_blksize
    a.st_blocks = st.st_blocks
    a.st_atime_ns = st.st_atime_ns
    a.st_mtime_ns = st.st_mtime_ns
    a.st_ctime_ns = st.st_ctime_ns
    return a


def negative_entry(entry_timeout: float) -> pyfuse3.EntryAttributes:
    """A cacheable negative LOOKUP reply (st_ino 0: the kernel keeps a negative dentry)."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = 0
    a.entry_timeout = entry_timeout
    return a


def statvfs_data(sv: os.statvfs_result, namemax: int | None = None) -> pyfuse3.StatvfsData:
    """The reply to STATFS from a ``statvfs`` of the backing directory (``namemax`` overrides
    ``f_namemax``: the union reports what its whiteout prefix leaves)."""
    out = pyfuse3.StatvfsData()
    out.f_bsize = sv.f_bsize
    out.f_frsize = sv.f_frsize
    out.f_blocks = sv.f_blocks
    out.f_bfree = sv.f_bfree
    out.f_bavail = sv.f_bavail
    out.f_files = sv.f_files
    out.f_ffree = sv.f_ffree
    out.f_favail = sv.f_favail
    out.f_namemax = sv.f_namemax if namemax is None else namemax
    return out
