"""A model of the dentry cache (fs/dcache.c), enough for the atomic_open races of seeds 002/003.

A :class:`Dentry` is a name in a directory, ``(parent ino, name)``: *negative* (``inode`` None)
or *positive*, *hashed* (visible to :meth:`DCache.d_lookup`) or unhashed, and possibly
*in-lookup* (allocated by :meth:`DCache.d_alloc_parallel`; its lookup is running, and every other
task asking for the same name waits for it). Inodes are just inode numbers.

References follow the kernel: :meth:`~DCache.d_lookup`, :meth:`~DCache.d_alloc` and
:meth:`~DCache.d_alloc_parallel` return the dentry with a reference (``dget``) taken by the
current trio task; :meth:`~DCache.dput` drops it (or ``with dcache.ref(dentry):``). The tasks
holding references are the tasks "operating on" the dentry: when an assertion fails they are the
racing tasks the oops names.

The kernel's assertions are kept. A failed one records an ``oops`` event (the BUG line as the
kernel prints it, the dentry, and every task operating on the dentry with its model call chain
at that moment, the failing task first) and raises :class:`~stackfs.kernel.events.Oops`:

* ``d_splice_alias``: ``BUG_ON(!d_unhashed(dentry))`` (Linux 4.7 had it at the top of
  d_splice_alias; it is the BUG of Oleg Drokin's 2016 report "NFS/d_splice_alias breakage", the
  ``RIP: d_splice_alias+478`` of seed 003);
* ``d_add``: the same assertion in ``__d_rehash`` (reached through ``__d_add``);
* ``d_instantiate``: ``BUG_ON(!hlist_unhashed(&entry->d_u.d_alias))``: already instantiated.

The BUG line is ``kernel BUG at fs/dcache.c!``: the file, and no line number, because the model
has no line of a real kernel's fs/dcache.c to show (a made-up one would read as the kernel's).
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import trio

from stackfs.kernel.events import OOPS, EventLog, Oops, make_event
from stackfs.kernel.task import (
    Task,
    calls,
    chain_of,
    current_chain,
    get_current_task,
    task_json,
    task_of,
)

Name = str | bytes

#: (file, assertion) of each modelled BUG_ON. The model mirrors the assertions of Linux 4.6/4.7's
#: fs/dcache.c but not that file's layout, so the BUG line names the file and no line number:
#: a number would be a detail of no real kernel (none could be checked against the 4.6/4.7
#: source here). The function is in the ``RIP:`` line, as the kernel prints it.
BUG_SITES: dict[str, tuple[str, str]] = {
    "d_splice_alias": ("fs/dcache.c", "BUG_ON(!d_unhashed(dentry))"),
    "__d_rehash": ("fs/dcache.c", "BUG_ON(!d_unhashed(entry))"),
    "d_instantiate": ("fs/dcache.c", "BUG_ON(!hlist_unhashed(&entry->d_u.d_alias))"),
}


class _Ref:
    """The references one trio task holds on a dentry."""

    __slots__ = ("count", "context", "task", "chain")

    def __init__(self, context: Any, task: Task, chain: tuple[str, ...]) -> None:
        self.count = 0
        self.context = context  # the holder's live contextvars.Context (None outside trio)
        self.task = task
        self.chain = chain


class Dentry:
    """``struct dentry``: a name in a directory, negative or positive, hashed or not."""

    __slots__ = ("id", "parent", "name", "inode", "hashed", "in_lookup", "users", "_done")

    def __init__(self, id: int, parent: int, name: Name) -> None:  # noqa: A002
        self.id = id
        self.parent = parent
        self.name = name
        self.inode: int | None = None
        self.hashed = False
        self.in_lookup = False
        self.users: dict[object, _Ref] = {}
        self._done: trio.Event | None = None

    @property
    def negative(self) -> bool:
        return self.inode is None

    @property
    def unhashed(self) -> bool:
        """``d_unhashed()``: not reachable by d_lookup (in-lookup dentries are unhashed too)."""
        return not self.hashed

    @property
    def refs(self) -> int:
        """``d_count()``."""
        return sum(r.count for r in self.users.values())

    @property
    def display_name(self) -> str:
        return os.fsdecode(self.name) if isinstance(self.name, bytes) else self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "name": self.display_name,
            "inode": self.inode,
            "hashed": self.hashed,
            "in_lookup": self.in_lookup,
            "refs": self.refs,
        }

    def __repr__(self) -> str:
        state = "positive" if self.inode is not None else "negative"
        flags = "hashed" if self.hashed else "unhashed"
        if self.in_lookup:
            flags += ",in-lookup"
        return f"<Dentry #{self.id} {self.parent}/{self.display_name!r} {state} {flags}>"


_thread = threading.local()


def _caller() -> tuple[object, Any]:
    """(key, live context) of the caller: its trio task, or its thread outside trio."""
    try:
        t = trio.lowlevel.current_task()
    except RuntimeError:
        key = getattr(_thread, "key", None)
        if key is None:
            key = _thread.key = object()
        return key, None
    return t, t.context


class DCache:
    """The dentry cache of one superblock (one daemon may model several)."""

    def __init__(self, name: str = "", events: EventLog | None = None) -> None:
        self.name = name
        self.events = events
        self._hash: dict[tuple[int, Name], list[Dentry]] = {}
        self._in_lookup: dict[tuple[int, Name], Dentry] = {}
        self._ids = itertools.count(1)

    # -- references ------------------------------------------------------------------------------

    def dget(self, dentry: Dentry) -> Dentry:
        """Take a reference for the current trio task."""
        key, context = _caller()
        ref = dentry.users.get(key)
        if ref is None:
            ref = dentry.users[key] = _Ref(
                context, get_current_task(), () if context is not None else current_chain()
            )
        ref.count += 1
        return dentry

    def dput(self, dentry: Dentry | None) -> None:
        """Drop a reference: the current trio task's, or (handed over) the oldest other one."""
        if dentry is None:
            return
        key, _ = _caller()
        ref = dentry.users.get(key)
        if ref is None:
            if not dentry.users:
                raise ValueError(f"dput of {dentry!r} which has no references")
            key, ref = next(iter(dentry.users.items()))
        ref.count -= 1
        if ref.count <= 0:
            del dentry.users[key]

    def ref(self, dentry: Dentry | None) -> _DentryRef:
        """``with dcache.ref(dentry):`` dput at the end (the reference is already taken)."""
        return _DentryRef(self, dentry)

    # -- lookup and allocation -------------------------------------------------------------------

    def d_lookup(self, parent: int, name: Name) -> Dentry | None:
        """The hashed dentry for ``name`` in ``parent`` (positive or negative), referenced."""
        chain = self._hash.get((parent, name))
        if not chain:
            return None
        return self.dget(chain[0])

    def d_alloc(self, parent: int, name: Name) -> Dentry:
        """A new unhashed negative dentry, referenced."""
        return self.dget(Dentry(next(self._ids), parent, name))

    async def d_alloc_parallel(self, parent: int, name: Name) -> Dentry:
        """A referenced dentry for ``name``: hashed, or a new in-lookup one (fs/dcache.c).

        If another task has the same name in lookup, wait for it (``d_wait_lookup``) and return
        its dentry if the lookup left it hashed; otherwise try again. The caller owning a
        returned in-lookup dentry must end its lookup with :meth:`d_lookup_done`,
        :meth:`d_add` or :meth:`d_splice_alias`.
        """
        key = (parent, name)
        while True:
            hashed = self._hash.get(key)
            if hashed:
                return self.dget(hashed[0])
            dentry = self._in_lookup.get(key)
            if dentry is None:
                dentry = Dentry(next(self._ids), parent, name)
                dentry.in_lookup = True
                dentry._done = trio.Event()
                self._in_lookup[key] = dentry
                return self.dget(dentry)
            self.dget(dentry)
            done = dentry._done
            assert done is not None
            try:
                with calls("d_alloc_parallel", "d_wait_lookup"):
                    await done.wait()
            except BaseException:
                self.dput(dentry)
                raise
            if dentry.hashed and dentry.parent == parent and dentry.name == name:
                return dentry
            self.dput(dentry)

    def d_lookup_done(self, dentry: Dentry) -> None:
        """End the in-lookup state and wake the tasks waiting in d_alloc_parallel."""
        if not dentry.in_lookup:
            return
        dentry.in_lookup = False
        key = (dentry.parent, dentry.name)
        if self._in_lookup.get(key) is dentry:
            del self._in_lookup[key]
        if dentry._done is not None:
            dentry._done.set()
            dentry._done = None

    # -- hashing and instantiation ---------------------------------------------------------------

    def d_add(self, dentry: Dentry, inode: int | None) -> None:
        """Instantiate (or leave negative) and hash; ``__d_rehash`` BUGs on a hashed dentry."""
        self._d_add(dentry, inode, "d_add")

    def d_splice_alias(self, inode: int | None, dentry: Dentry) -> Dentry | None:
        """What ->lookup returns: hash ``dentry`` with ``inode``; BUG if it is already hashed.

        Returns None (the dentry passed in was used), as the kernel does when there is no
        other alias to move into place. A dentry that is unhashed but already has this very
        inode (another lookup spliced it, then someone dropped it) is simply rehashed.
        """
        if dentry.hashed:
            self._bug("d_splice_alias", "d_splice_alias", dentry, inode)
        self._d_add(dentry, inode, "d_splice_alias")
        return None

    def d_instantiate(self, dentry: Dentry, inode: int) -> None:
        """Attach ``inode`` to a negative dentry (does not hash it); BUG if already positive."""
        if dentry.inode is not None:
            self._bug("d_instantiate", "d_instantiate", dentry, inode)
        dentry.inode = inode

    def d_rehash(self, dentry: Dentry) -> None:
        """Hash the dentry again (``__d_rehash`` BUGs on a hashed dentry)."""
        self._rehash(dentry, "d_rehash")

    def _d_add(self, dentry: Dentry, inode: int | None, function: str) -> None:
        # __d_add(): end the in-lookup state, set the inode, __d_rehash()
        if dentry.hashed:
            self._bug(function, "__d_rehash", dentry, inode)
        if dentry.in_lookup:
            self.d_lookup_done(dentry)
        if inode is not None:
            dentry.inode = inode
        self._rehash(dentry, function)

    def _rehash(self, dentry: Dentry, function: str) -> None:
        if dentry.hashed:
            self._bug(function, "__d_rehash", dentry, dentry.inode)
        dentry.hashed = True
        self._hash.setdefault((dentry.parent, dentry.name), []).insert(0, dentry)

    # -- unhashing -------------------------------------------------------------------------------

    def d_drop(self, dentry: Dentry) -> None:
        """Unhash the dentry (no-op when unhashed or in lookup)."""
        if not dentry.hashed:
            return
        dentry.hashed = False
        key = (dentry.parent, dentry.name)
        chain = self._hash.get(key)
        if chain is not None:
            try:
                chain.remove(dentry)
            except ValueError:
                pass
            if not chain:
                del self._hash[key]

    def d_invalidate(self, dentry: Dentry) -> None:
        """What a failed ->d_revalidate leads to: unhash the dentry and its hashed subtree."""
        if not dentry.hashed:
            return
        self.d_drop(dentry)
        if dentry.inode is not None:
            children = [d for ds in self._hash.values() for d in ds if d.parent == dentry.inode]
            for child in children:
                self.d_invalidate(child)

    # -- queries ---------------------------------------------------------------------------------

    def dentries(self) -> list[Dentry]:
        """Every hashed and every in-lookup dentry."""
        out = [d for ds in self._hash.values() for d in ds]
        out.extend(self._in_lookup.values())
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.dentries()]

    # -- BUG() -----------------------------------------------------------------------------------

    def _bug(self, function: str, site: str, dentry: Dentry, inode: int | None) -> None:
        file, assertion = BUG_SITES[site]
        me_key, _ = _caller()
        task = get_current_task()
        outer = current_chain()
        tasks = [task_json(task, (*outer, function))]
        for key, ref in dentry.users.items():
            if key is me_key:
                continue
            if ref.context is not None:
                tasks.append(task_json(task_of(ref.context), chain_of(ref.context)))
            else:
                tasks.append(task_json(ref.task, ref.chain))
        number = (self.events.counts.get(OOPS, 0) if self.events is not None else 0) + 1
        bug = f"kernel BUG at {file}!"  # no line number: see BUG_SITES
        opcode = f"invalid opcode: 0000 [#{number}] SMP"
        lines = [
            "------------[ cut here ]------------",
            bug,
            opcode,
            f"PID: {task.pid} Comm: {task.comm}",
            f"RIP: 0010:{function}",
            "Call Trace:",
            *(f" {f}" for f in reversed(outer)),
        ]
        others = len(tasks) - 1
        summary = (
            f"{bug} {opcode} RIP: {function} - {task} on dentry {dentry.display_name!r} "
            f"(parent ino {dentry.parent}), {others} other task{'s' if others != 1 else ''} on it"
        )
        detail = {
            "bug": bug,
            "function": function,
            "site": site,
            "assertion": assertion,
            "file": file,
            "line": None,  # modelled: the model has no line of a real fs/dcache.c
            "lines": lines,
            "dentry": dentry.to_json(),
            "inode": inode,
            "sb": self.name,
        }
        if self.events is not None:
            event = self.events.record(OOPS, summary, tasks, detail)
        else:
            event = make_event(OOPS, summary, tasks, detail)
        raise Oops(event)


class _DentryRef:
    __slots__ = ("dcache", "dentry")

    def __init__(self, dcache: DCache, dentry: Dentry | None) -> None:
        self.dcache, self.dentry = dcache, dentry

    def __enter__(self) -> Dentry | None:
        return self.dentry

    def __exit__(self, *exc: object) -> None:
        self.dcache.dput(self.dentry)
