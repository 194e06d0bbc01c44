"""Real kernel locks inferred from kernel stacks: who waits for which ``i_rwsem``, who holds one.

The kernel does not export its lock holders (that is lockdep's ``debug_show_all_locks``, not in
production kernels). But the VFS takes ``inode->i_rwsem`` at a few well-known places, so a
stack tells it:

* a task in state D whose innermost frame is one of :data:`WAITS` is asleep in ``down_write``
  or ``down_read`` of the lock that function takes (``filename_create`` takes the parent
  directory's i_rwsem exclusive for mkdir/mknod/symlink/link, ``lookup_slow`` takes it shared,
  ...): the scheduler frames are hidden from /proc stacks, so the caller of ``inode_lock`` is on
  top;
* a task with one of :data:`HOLDS` on its stack, below the place where it sleeps, holds that lock
  (``__lookup_slow`` runs under ``inode_lock_shared(dir)`` taken in ``lookup_slow``;
  ``vfs_mkdir`` under ``filename_create``'s exclusive lock; ...).

The object is the directory or file the syscall names (:class:`~stackfs.watchdog.procscan.Syscall`
paths). For a lookup the directory is the parent of the component being looked up, which only
the daemon knows (its in-flight LOOKUP names it); without it every ancestor of the path inside
the mount is a candidate, and the edge is marked as such.

This is how the kernel deadlock of shared/NOTES.md is explained: the helper's ``mkdir`` waits in
``filename_create`` for the directory's i_rwsem, held shared by the ``stat`` caller inside
``__lookup_slow`` -> ``fuse_lookup`` -> ``request_wait_answer``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from stackfs.watchdog.procscan import TaskInfo

READ, WRITE = "read", "write"

#: innermost frame -> (which object: "parent" | "inode" | "ancestor" | "both-parents", mode)
WAITS: dict[str, tuple[str, str]] = {
    "filename_create": ("parent", WRITE),  # mkdir, mknod, symlink, link (inode_lock_nested)
    "do_rmdir": ("parent", WRITE),
    "do_unlinkat": ("parent", WRITE),
    "lock_rename": ("both-parents", WRITE),
    "lock_two_directories": ("both-parents", WRITE),
    "open_last_lookups": ("parent", WRITE),  # O_CREAT (shared without it: see _open_mode)
    "lookup_slow": ("ancestor", READ),
    "do_truncate": ("inode", WRITE),
    "vfs_truncate": ("inode", WRITE),
    "vfs_setxattr": ("inode", WRITE),
    "vfs_removexattr": ("inode", WRITE),
    "chmod_common": ("inode", WRITE),
    "chown_common": ("inode", WRITE),
    "vfs_utimes": ("inode", WRITE),
    "iterate_dir": ("inode", READ),
    "fuse_cache_write_iter": ("inode", WRITE),
    "fuse_file_write_iter": ("inode", WRITE),
    "fuse_direct_write_iter": ("inode", WRITE),
    "fuse_fsync": ("inode", WRITE),
    "fuse_file_fallocate": ("inode", WRITE),
}

#: frame on the stack -> (object, mode) of the lock held while it runs
HOLDS: dict[str, tuple[str, str]] = {
    "__lookup_slow": ("ancestor", READ),
    # a create's lookup or revalidation (lookup_one_qstr_excl -> lookup_dcache ->
    # d_revalidate) runs under filename_create's exclusive lock (seen on 6.18, docs/autofs.md)
    "filename_create": ("parent", WRITE),
    "lookup_open": ("parent", WRITE),  # shared without O_CREAT (see _open_mode)
    "vfs_mkdir": ("parent", WRITE),
    "vfs_mknod": ("parent", WRITE),
    "vfs_symlink": ("parent", WRITE),
    "vfs_link": ("parent", WRITE),
    "vfs_create": ("parent", WRITE),
    "vfs_unlink": ("parent", WRITE),
    "vfs_rmdir": ("parent", WRITE),
    "vfs_rename": ("both-parents", WRITE),
    "notify_change": ("inode", WRITE),
    "__vfs_setxattr_locked": ("inode", WRITE),
    "__vfs_removexattr_locked": ("inode", WRITE),
    "iterate_dir": ("inode", READ),
    "fuse_cache_write_iter": ("inode", WRITE),
    "fuse_direct_write_iter": ("inode", WRITE),
    "fuse_fsync": ("inode", WRITE),
}

_O_CREAT = 0o100


@dataclass(frozen=True)
class KLock:
    """``inode->i_rwsem`` of the file or directory at ``path`` (on connection ``conn``)."""

    path: str
    conn: int | None = field(default=None, compare=False)
    #: a directory (the parent of a name) rather than the file itself; None: unknown
    is_dir: bool | None = field(default=None, compare=False)

    @property
    def ident(self) -> str:
        return f"i_rwsem {self.path}"


@dataclass
class KLockUse:
    """A task waiting for, or holding, a :class:`KLock`."""

    lock: KLock
    mode: str
    at: str
    #: the object was chosen among several candidates (a lookup's ancestor directories)
    ambiguous: bool = False


def _open_mode(task: TaskInfo, mode: str) -> str:
    sc = task.syscall
    if sc is None or sc.name not in ("open", "openat", "openat2", "creat"):
        return mode
    flags = sc.args[1] if sc.name == "open" else sc.args[2] if sc.name == "openat" else None
    if sc.name == "creat":
        return WRITE
    if flags is None:
        return mode
    return WRITE if flags & _O_CREAT else READ


def _objects(task: TaskInfo, which: str, lookup_name: str | None) -> tuple[list[str], bool]:
    """The paths of the objects ``which`` names for ``task``'s syscall; (paths, ambiguous)."""
    sc = task.syscall
    if sc is None or not sc.paths:
        return [], False
    path = sc.paths[0]
    if which == "inode":
        return [path], False
    if which == "parent":
        return [os.path.dirname(path) or "/"], False
    if which == "both-parents":
        return sorted({os.path.dirname(p) or "/" for p in sc.paths}), False
    # "ancestor": the directory a lookup runs in
    parts = path.rstrip("/").split("/")
    if lookup_name:
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] == lookup_name:
                return ["/".join(parts[:i]) or "/"], False
    stop = task.mountpoint or "/"
    out = []
    d = os.path.dirname(path)
    while True:
        out.append(d or "/")
        if not d or d == "/" or d == stop or not d.startswith(stop):
            break
        d = os.path.dirname(d)
    return out, len(out) > 1


def waits_for(task: TaskInfo, lookup_name: str | None = None) -> list[KLockUse]:
    """The i_rwsem(s) ``task`` is asleep on, from the innermost frame of its stack."""
    if task.state != "D" or not task.frames:
        return []
    top = task.frames[0]
    if top not in WAITS:
        return []
    which, mode = WAITS[top]
    if top == "open_last_lookups":
        mode = _open_mode(task, mode)
    paths, ambiguous = _objects(task, which, lookup_name)
    is_dir = None if which == "inode" else True
    return [KLockUse(KLock(p, task.conn, is_dir), mode, top, ambiguous) for p in paths]


def holds(task: TaskInfo, lookup_name: str | None = None) -> list[KLockUse]:
    """The i_rwsem(s) ``task`` holds while it sleeps further in (frames below the top one)."""
    out: list[KLockUse] = []
    for frame in task.frames[1:]:
        if frame not in HOLDS:
            continue
        which, mode = HOLDS[frame]
        if frame == "lookup_open":
            mode = _open_mode(task, mode)
        paths, ambiguous = _objects(task, which, lookup_name if frame == "__lookup_slow" else None)
        is_dir = None if which == "inode" else True
        out.extend(KLockUse(KLock(p, task.conn, is_dir), mode, frame, ambiguous) for p in paths)
    return out


def conflicts(want: str, held: str) -> bool:
    """Whether a ``want`` request must wait for a ``held`` hold (rwsem semantics)."""
    return want == WRITE or held == WRITE
