"""The autofs personality (seed 001): an indirect automount map, served with automount(8)'s help.

The mount's root lists the map's keys that are mounted. The map is a directory
(``-o map=DIR``, default ``STORE/.map``): a LOOKUP of ``KEY`` (a directory ``DIR/KEY`` exists)
that is not mounted yet sends a *missing* packet to the automount daemon, ``stackfs
automountd`` (:mod:`backends.automountd`), a separate process this daemon starts with the mount
and stops (and reaps) with it. The daemon does what automount(8) does: ``mkdir(2)`` of the mount
point **through this mount** (the real VFS: ``filename_create`` takes the root directory's
i_rwsem exclusively), a real bind mount of ``DIR/KEY`` on it, then ``AUTOFS_IOC_READY``. A
mounted key expires after ``-o timeout=S`` idle seconds, or on demand (``stackfs server
MOUNTPOINT expire KEY``): the daemon unmounts it (EBUSY while in use), removes the mount point
through this mount, and only then reports the expire's completion.

What is real and what is modelled
    Real: the processes, the directory i_rwsem and who blocks on it, the daemon's mkdir/rmdir
    through the mount, its bind mounts, the path walk crossing into them. What the kernel is
    doing when it sends a LOOKUP is read from the caller's kernel stack (``/proc/TID/stack``,
    verified on Linux 6.18, docs/autofs.md): ``fuse_dentry_revalidate`` is a revalidation (a
    path walk's ``lookup_fast`` holds no lock; a create's ``filename_create`` ->
    ``lookup_one_qstr_excl`` holds the parent's i_rwsem exclusively), ``fuse_lookup`` is
    ``->lookup`` (``__lookup_slow``: shared). Modelled, with autofs4's names, in the kernel
    dcache model (``stackfs state``): the autofs dentries and their flags
    (``DCACHE_AUTOFS_PENDING``, ``AUTOFS_INF_EXPIRING``, ``DCACHE_NEED_AUTOMOUNT``), the wait
    queues (``struct autofs_wait_queue``: a completion held by the daemon's thread that works
    on the request) and the look-aside list of expiring dentries.

One translation: autofs4's ``->lookup`` hashed the dentry, *dropped the directory mutex* and
waited for the daemon. A FUSE daemon can never drop the caller's lock, so a ``->lookup``
posts the mount request and answers at once with a positive trigger directory (entry timeout
0): the wait moves to the caller's next request on the name, a lock-free revalidation in its
path walk (``chdir``, ``openat``). That is where autofs4 would have been too, without the lock.

Variants (``-o`` ``--variant``; the history from ``fs/autofs4/root.c``, docs/autofs.md)
    ``2.6.18`` (2.6.18.8's root.c): ``autofs4_lookup`` hashes the new dentry (``d_add``), drops
    the directory mutex and revalidates it (``try_to_fill_dentry`` -> ``autofs4_wait``). A
    second ``mkdir`` of the name finds that hashed, pending, negative dentry, revalidates it
    under ``filename_create``'s exclusive lock and waits for the daemon, whose ``mkdir`` of the
    mount point needs that very lock: the deadlock of commit 1864f7bd. Its mount request is
    matched by name (``autofs4_wait``): a lookup after an expire removed the mount point and
    before it completed joins the *expire's* queue; nothing instantiates its dentry and the
    walk gets ENOENT (the race the seed's 2008 quote describes).
    ``rehash`` (f50b6f8691ca, 2.6.21, "autofs4: fix another race between mount and expire"):
    2.6.18 plus the rehash list (``autofs4_lookup_unhashed``: "keep track of dentrys in this
    unhashed state and reuse them"): ``->lookup`` takes the dentry the expire's
    ``rmdir`` left, waits while it is ``AUTOFS_INF_EXPIRING``, then mounts. Hashes in
    ``->lookup`` still, so the create deadlock stays.
    ``1864f7bd`` (2.6.23, "autofs4: deadlock during create"): ``->lookup`` instantiates the
    dentry without hashing it; ``autofs4_dir_mkdir`` hashes the daemon's own (``d_add``). A
    second creator misses the unhashed dentry in the dcache and does its own ``->lookup``
    (which dropped the mutex): it never revalidates under the lock. Keeps the rehash list.
    ``lookaside`` (2576737873dc, "autofs4: use look aside list for lookups", 2008): one dentry
    for every ``->lookup`` of a pending mount and for the daemon's ``mkdir``; an expiring
    dentry is reused from its look-aside list (``autofs4_lookup_expiring``), kept positive,
    and the lookup waits for the expire (``autofs4_expire_wait``), then mounts.
    ``2.6.38`` (``d_automount``/``d_manage``, 9875cf806403): ``->lookup`` and a create's
    last component never wait; a path walk that crosses the dentry (a revalidation with no lock
    held) waits for an expire (``autofs_d_manage``) and for the mount (``autofs_d_automount``).

Which callback a LOOKUP is follows the modelled dcache: a revalidation of a dentry the model
has hashed is ``->d_revalidate``, anything else ``->lookup`` (the VFS's ``d_lookup`` misses an
unhashed dentry). The caller's stack gives autofs4 only what it was given, the lookup's intent
(``nd->flags``: the last component of a create); whether FUSE holds the directory lock decides
only where a wait autofs4 did with the mutex dropped can take place (the translation above).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio
from pyfuse3 import InodeT, ModeT, RequestContext

from backends.autofs_model import (
    EXPIRING,
    HASH_IN_LOOKUP,
    LOOKUP_ENOENT,
    MOUNTED,
    NEED_AUTOMOUNT,
    PENDING,
    REUSE_EXPIRING,
    WAIT_UNDER_LOCK,
    AutofsInfo,
    Caller,
    WaitQueue,
)
from backends.base import Inode, Option, StoreFS, fuse_op
from stackfs.kernel.dcache import Dentry
from stackfs.kernel.task import (
    Task,
    calls,
    current_chain,
    get_current_task,
    running_as,
    task_json,
)
from stackfs.runtime import control, rundir, service

ROOT = pyfuse3.ROOT_INODE
#: the default map directory and the trigger directories, inside the store (hidden)
MAP_DIR = ".map"
TRIGGER_DIR = ".autofs"


class AutofsFS(StoreFS):
    """autofs4 over an indirect map, with ``stackfs automountd`` as its daemon."""

    kind = "autofs"
    variants = {
        "2.6.18": "2.6.18's root.c: ->lookup hashes the dentry (d_add) before calling back the "
        "daemon; every revalidation of a pending negative dentry waits, also under a create's "
        "directory lock (deadlock during create); a new dentry's mount request joins a pending "
        "expire by name and the lookup returns it negative (ENOENT)",
        "rehash": "2.6.18 plus the rehash list (autofs4_lookup_unhashed, f50b6f8691ca, 2.6.21): "
        "->lookup reuses the unhashed dentry an expire left and waits while it is "
        "AUTOFS_INF_EXPIRING, then mounts; still hashes in ->lookup (the create deadlock stays)",
        "1864f7bd": "commit 1864f7bd (2.6.23, deadlock during create): ->lookup leaves the dentry "
        "unhashed until autofs4_dir_mkdir hashes the daemon's own (d_add), so a second creator "
        "misses it in the dcache and goes through ->lookup, never ->d_revalidate; keeps the "
        "rehash list",
        "lookaside": "2576737873dc (use look aside list for lookups, 2008): the same dentry "
        "for every ->lookup of a pending mount and for the daemon's mkdir; reuse the expiring "
        "dentry, wait for the expire, then mount",
        "2.6.38": "d_automount/d_manage: waits only where a path walk crosses the dentry, "
        "with no lock held (Linux 2.6.38)",
    }
    injection_points = {
        "autofs4_notify_daemon": "a mount request's packet to the daemon; each task that "
        "starts waiting for a mount request hits it too (barrier:3 "
        "holds the daemon callback until two tasks wait)",
        "autofs4_expire_ready": "the daemon's completion of an expire, before its waiters "
        "wake; each task that starts waiting for an expire hits it too "
        "(barrier:2 holds the completion until a lookup waits)",
    }
    extra_options = (
        Option(
            "timeout",
            float,
            5.0,
            "idle seconds before a mounted map entry expires (automount --timeout; 0: never)",
        ),
        Option(
            "map",
            str,
            "",
            "the indirect map directory: DIR/KEY is bind-mounted on KEY (default STORE/.map)",
        ),
    )
    #: every walk through a key must reach this daemon (pending, mounted, expiring)
    option_defaults = {"entry_timeout": 0.0, "attr_timeout": 0.0}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.expire_timeout = float(self.opts["timeout"])
        self.map_dir = Path(self.opts["map"] or self.store / MAP_DIR).resolve()
        # 0755 made explicit: the daemon runs with umask(0) (backends/cli.py), and a map others
        # could write would have root's automounter bind-mount whatever they put there
        self.map_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.trigger_dir = self.store / TRIGGER_DIR
        self.trigger_dir.mkdir(mode=0o755, exist_ok=True)
        self.dc = self.kernel.dcache("autofs")
        self.info: dict[bytes, AutofsInfo] = {}
        #: pending wait queues by name (autofs4_find_wait matches the name only)
        self.wqs: dict[bytes, WaitQueue] = {}
        self.tokens: dict[int, WaitQueue] = {}
        self._next_token = 1
        #: the look-aside list of expiring dentries (2576737873dc)
        self.expiring: dict[bytes, Dentry] = {}
        #: trigger directory inode -> its key
        self.triggers: dict[int, bytes] = {}
        self.daemon: service.Service | None = None
        self.daemon_task: Task | None = None
        self._pipe: trio.SocketStream | None = None
        self._send_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.catatonic = False

    # -- the daemon ------------------------------------------------------------------------------

    async def started(self, nursery: trio.Nursery) -> None:
        """Start ``stackfs automountd`` (from the main thread: its parent-death signal follows
        this thread) and connect to its pipe."""
        from backends.automountd import socket_path

        info = rundir.read_info(os.getpid()) or {}
        mp = info.get("mountpoint")
        if not mp:
            raise RuntimeError("autofs: cannot tell my own mount point")
        log = None
        with contextlib.suppress(OSError):
            target = os.readlink("/proc/self/fd/2")
            if target.startswith("/") and os.path.isfile(target):
                log = Path(target)
        argv = [
            sys.executable,
            "-m",
            "backends.automountd",
            "--autofs",
            mp,
            "--map",
            str(self.map_dir),
        ]
        self.daemon = service.start(argv, "automount", log=log)
        self.daemon_task = Task.from_pid(self.daemon.pid)
        self._pipe = await trio.open_unix_socket(socket_path(self.daemon.pid))
        self._nursery = nursery
        nursery.start_soon(self._read_pipe)
        nursery.start_soon(self._reaper)
        if self.expire_timeout > 0:
            nursery.start_soon(self._expire_timer)

    async def _reaper(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if self._pipe is not None:
                    with contextlib.suppress(Exception):
                        await self._pipe.aclose()
                if self.daemon is not None:
                    await trio.to_thread.run_sync(self.daemon.stop)

    def oz_mode(self, tid: int) -> bool:
        """``autofs4_oz_mode``: the request comes from the daemon (any of its threads)."""
        return self.daemon is not None and os.path.exists(f"/proc/{self.daemon.pid}/task/{tid}")

    async def _send(self, msg: dict[str, Any]) -> bool:
        if self._pipe is None or self.catatonic:
            return False
        async with self._send_lock:
            try:
                await self._pipe.send_all(json.dumps(msg).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True

    async def _read_pipe(self) -> None:
        assert self._pipe is not None and self._nursery is not None
        async for msg in control.json_lines(self._pipe):
            self._nursery.start_soon(self._daemon_says, msg)
        self.autofs4_catatonic_mode()

    def autofs4_catatonic_mode(self) -> None:
        """The daemon is gone: fail every pending request (ENOENT), as autofs4 does."""
        self.catatonic = True
        for wq in list(self.tokens.values()):
            self._finish(wq, -errno.ENOENT)

    async def _daemon_says(self, msg: dict[str, Any]) -> None:
        wq = self.tokens.get(int(msg.get("token", -1)))
        if wq is None:
            return
        op = msg.get("op")
        if op == "working":
            wq.completion.set_holder(Task.from_pid(int(msg["tid"])))
            return
        status = 0 if op == "ready" else -int(msg.get("errno") or errno.ENOENT)
        if wq.type == "expire":
            with running_as(wq.completion.holder), calls("autofs4_expire_indirect"):
                await self.kernel.inject.hit("autofs4_expire_ready")
        self._finish(wq, status)

    def _finish(self, wq: WaitQueue, status: int) -> None:
        """``autofs4_wait_release``: wake the waiters, update the dentry's flags."""
        if self.tokens.pop(wq.token, None) is None:
            return
        if self.wqs.get(wq.name) is wq:
            del self.wqs[wq.name]
        ai = self._info(wq.name)
        if wq.type == "mount":
            ai.flags.discard(PENDING)
            if status == 0:
                ai.flags.add(MOUNTED)
                ai.flags.discard(NEED_AUTOMOUNT)
        else:
            ai.flags.discard(EXPIRING)
            if status == 0:
                ai.flags.discard(MOUNTED)
                self.expiring.pop(wq.name, None)  # autofs4_del_expiring
            wq.rmdir_seen.set()
        ai.last_used = time.time()
        wq.completion.complete_all(status)

    def _new_wq(self, key: bytes, kind: str) -> WaitQueue:
        token = self._next_token
        self._next_token += 1
        what = "mount request" if kind == "mount" else "expire"
        c = self.kernel.completions.new(
            "autofs_wait_queue",
            os.fsdecode(key),
            holder=self.daemon_task,
            desc=f"{what} #{token} for {os.fsdecode(key)!r}, answered by the automount daemon",
        )
        wq = WaitQueue(token, key, kind, c)
        self.wqs[key] = wq
        self.tokens[token] = wq
        assert self._nursery is not None
        self._nursery.start_soon(self._notify, wq)
        return wq

    async def _notify(self, wq: WaitQueue) -> None:
        """``autofs4_notify_daemon``: the packet goes down the pipe."""
        if wq.type == "mount":
            with running_as(self.daemon_task), calls("autofs4_notify_daemon"):
                await self.kernel.inject.hit("autofs4_notify_daemon")
        packet = {
            "type": "missing" if wq.type == "mount" else "expire",
            "token": wq.token,
            "name": os.fsdecode(wq.name),
        }
        wq.notified = time.time()
        if not await self._send(packet):
            self._finish(wq, -errno.ENOENT)

    # -- the model -------------------------------------------------------------------------------

    def _info(self, key: bytes) -> AutofsInfo:
        ai = self.info.get(key)
        if ai is None:
            ai = self.info[key] = AutofsInfo(key)
        return ai

    def map_has(self, key: bytes) -> bool:
        return not key.startswith(b".") and (self.map_dir / os.fsdecode(key)).is_dir()

    def mounted(self, key: bytes) -> bool:
        ai = self.info.get(key)
        return ai is not None and MOUNTED in ai.flags

    def _post_mount(self, key: bytes) -> WaitQueue:
        wq = self.wqs.get(key)
        if wq is None:
            wq = self._new_wq(key, "mount")
            self._info(key).flags.add(PENDING)
        return wq

    async def autofs4_wait(self, key: bytes, kind: str, lock: tuple[str, str] | None) -> int:
        """Wait for the request on ``key`` (joining the pending one of that name, whatever its
        type, as ``autofs4_find_wait`` does; a new mount request if none)."""
        wq = self.wqs.get(key)
        if wq is None:
            if kind == "expire":
                return 0
            wq = self._post_mount(key)
        task = get_current_task()
        with calls("autofs4_wait"):
            if lock is not None:
                self._wait_under_lock(task, key, wq, lock)
            point = "autofs4_notify_daemon" if wq.type == "mount" else "autofs4_expire_ready"
            await self.kernel.inject.hit(point)
            return await wq.completion.wait()

    def _wait_under_lock(
        self, task: Task, key: bytes, wq: WaitQueue, lock: tuple[str, str]
    ) -> None:
        frame, mode = lock
        name = os.fsdecode(key)
        self.count("wait_under_lock")
        self.kernel.events.record(
            WAIT_UNDER_LOCK,
            f"possible deadlock: {task} waits in autofs4_wait for the automount daemon "
            f"({wq.type} #{wq.token} of {name!r}) with the parent directory's i_rwsem held "
            f"({'exclusive' if mode == 'write' else 'shared'}, taken in {frame})",
            [task_json(task, current_chain())],
            {
                "key": name,
                "token": wq.token,
                "wait_type": wq.type,
                "lock": "i_rwsem",
                "object": "parent directory (the autofs root)",
                "mode": mode,
                "taken_in": frame,
                "daemon": task_json(wq.completion.holder, ()) if wq.completion.holder else None,
            },
        )

    def _lookup_enoent(self, key: bytes, d: Dentry, wq: WaitQueue) -> None:
        """Record the seed's ENOENT: the new dentry's mount request matched the expire and
        the lookup was left with no positive dentry (the state that made it ENOENT)."""
        task = get_current_task()
        name = os.fsdecode(key)
        self.count("lookup_enoent_after_expire")
        self.kernel.events.record(
            LOOKUP_ENOENT,
            f"autofs4_lookup: {task} looked up {name!r} with a new dentry #{d.id}; its mount "
            f"request matched the pending expire #{wq.token} of {name!r} (autofs4_wait), woke "
            f"when the expire completed, dentry #{d.id} "
            f"{'hashed but' if d.hashed else 'unhashed and'} negative (nothing instantiated "
            "it), no mount requested: ENOENT",
            [task_json(task, (*current_chain(), "autofs4_wait"))],
            {
                "key": name,
                "dentry": d.to_json(),
                "expire_token": wq.token,
                "expire_status": wq.completion.status,
                "errno": "ENOENT",
            },
        )

    # -- LOOKUP ----------------------------------------------------------------------------------

    def _trigger_key(self, inode: Inode | None, tid: int) -> bytes | None:
        """The key whose mount a walk that is *in* ``inode`` needs: a trigger directory, or a
        mount point directory whose mount went away under the walk (an expire unmounted it
        between the revalidation and the mount crossing). Never for the daemon."""
        if inode is None:
            return None
        key = self.triggers.get(inode.ino)
        if key is None and inode.is_dir and inode.parent == ROOT and self.map_has(inode.name):
            key = inode.name
        if key is None or self.oz_mode(tid):
            return None
        return key

    async def lookup_entry(self, parent: Inode, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        key = self._trigger_key(parent, ctx.pid)
        if key is not None and name not in (b".", b".."):
            return await self._lookup_in_trigger(key, name, ctx)
        if parent.ino != ROOT or name in (b".", b".."):
            return await super().lookup_entry(parent, name, ctx)
        if name.startswith(b"."):
            raise OSError(errno.ENOENT, "hidden")
        if self.oz_mode(ctx.pid):  # the daemon sees the directory as it is
            return await super().lookup_entry(parent, name, ctx)
        if not self.map_has(name):
            raise OSError(errno.ENOENT, "not a map key")
        caller = Caller.of(ctx.pid)
        self._info(name).last_used = time.time()
        self.count("lookup_key")
        with calls(*caller.chain()):
            # which callback autofs4 gets follows the modelled dcache, as the VFS's did: a
            # hashed dentry is revalidated (lookup_dcache / lookup_fast), an unhashed one is
            # missed by d_lookup and looked up again (->lookup), whatever FUSE sent
            d = self.dc.d_lookup(ROOT, name)
            self.dc.dput(d)
            if caller.revalidate and caller.known and d is not None:
                self.count("autofs4_revalidate")
                status = await self.autofs4_revalidate(name, caller)
            else:
                self.count("autofs4_lookup")
                status = await self.autofs4_lookup(name, caller)
        if status:
            raise OSError(-status, "autofs4_wait")
        self._info(name).last_used = time.time()
        return self._entry(name)

    async def autofs_d_automount(self, key: bytes) -> int:
        """The lock-free point where a path walk that went into a trigger directory waits:
        its next component's LOOKUP (or OPENDIR) in the trigger (holding the trigger's own
        i_rwsem at most, which no mount needs). Wait for a pending expire, then for the mount;
        then the walk goes on in the mounted map entry."""
        with calls("follow_managed"):
            if key in self.wqs and self.wqs[key].type == "expire":
                with calls("autofs_d_manage", "autofs_expire_wait"):
                    await self.autofs4_wait(key, "expire", None)
            if self.mounted(key):
                return 0
            with calls("follow_automount", "autofs_d_automount"):
                return await self.autofs4_wait(key, "mount", None)

    async def _into_mount(self, key: bytes, ctx) -> Inode:
        """The mounted map entry a walk that is in ``key``'s trigger (or in its mount point,
        not crossed) works in, once the mount is there (``autofs_d_automount``)."""
        caller = Caller.of(ctx.pid)
        with calls(*caller.chain()):
            status = await self.autofs_d_automount(key)
        if status:
            raise OSError(-status, "autofs4_wait")
        self._info(key).last_used = time.time()
        return self._map_entry(key)

    async def _lookup_in_trigger(self, key: bytes, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        return await super().lookup_entry(await self._into_mount(key, ctx), name, ctx)

    async def _walked_in(self, parent_inode: InodeT, ctx) -> InodeT:
        """The directory a create, remove or rename in ``parent_inode`` works in: the mounted
        map entry when ``parent_inode`` is a trigger (or a mount point the walk did not cross),
        else ``parent_inode`` itself. The translation's other half: autofs4's walk had waited
        in ``->lookup`` (mutex dropped) and crossed into the mount, so ``mkdir proj/out1`` as
        the first access made out1 in the mounted volume; here the walk stands in the trigger,
        and its operations there are the mount's."""
        key = self._trigger_key(self.inodes.get(parent_inode), ctx.pid)
        if key is None:
            return parent_inode
        return InodeT((await self._into_mount(key, ctx)).ino)

    @fuse_op
    async def opendir(self, inode: InodeT, ctx: RequestContext):
        key = self._trigger_key(self.inodes.get(inode), ctx.pid)
        if key is not None:
            inode = InodeT((await self._into_mount(key, ctx)).ino)
        return await super().opendir.__wrapped__(self, inode, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    def _map_entry(self, key: bytes) -> Inode:
        """The mounted map entry's directory (what the walk finds behind the trigger)."""
        fd = os.open(self.map_dir / os.fsdecode(key), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.remember(fd, os.fstat(fd), None, key)

    def _entry(self, key: bytes) -> pyfuse3.EntryAttributes:
        """The mount point directory once the daemon's ``mkdir`` made it (mounted or not yet),
        else the trigger directory.

        From the daemon's ``mkdir`` on, the kernel's dentry of the key is the one that mkdir
        instantiated, and the daemon's bind mount may be on it before its READY arrives: a
        LOOKUP answered then with another node id (the trigger's) makes the kernel drop that
        dentry (``d_invalidate``), which detaches the mounts on it (verified on 6.18,
        docs/autofs.md). autofs4 never swapped the dentry under a mount."""
        try:
            inode, st = self.lookup_store(self.inodes[ROOT], key)
        except FileNotFoundError:
            pass
        else:
            inode.nlookup += 1
            return self.entry(inode, st)
        trigger = self.trigger_dir / os.fsdecode(key)
        trigger.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(trigger, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        inode = self.remember(fd, st, None, key)
        self.triggers[inode.ino] = key
        inode.nlookup += 1
        return self.entry(inode, st)

    def free_inode(self, inode: Inode) -> None:
        self.triggers.pop(inode.ino, None)

    def _dentry(self, key: bytes, hashed: bool) -> Dentry:
        """The key's model dentry (a new one if it has none), hashed if asked."""
        ai = self._info(key)
        d = ai.dentry
        if d is None:
            d = ai.dentry = self.dc.d_alloc(ROOT, key)
            self.dc.dput(d)
        if hashed and not d.hashed:
            self.dc.d_rehash(d)
        return d

    async def autofs4_lookup(self, key: bytes, caller: Caller) -> int:
        """``->lookup``: the VFS found no hashed dentry. autofs4 instantiated a new one
        (2.6.18: ``d_add``, hashed; 1864f7bd: ``d_instantiate`` only, hashed by
        ``autofs4_dir_mkdir``), or reused the unhashed one an expire left (rehash list,
        look-aside list), dropped the directory mutex and waited for the daemon.

        Translation: FUSE cannot drop the caller's lock, so where the caller holds it (every
        FUSE ``->lookup``: ``__lookup_slow``, ``atomic_open``, a create's
        ``lookup_one_qstr_excl``) a *mount* request is posted and answered at once with the
        trigger; its next, lock-free request waits. A revalidation from a walk holds nothing
        and waits here. A wait that needs no lock (an expire's completion) is done here in
        any case, as autofs4 did."""
        if self.mounted(key) and EXPIRING not in self._info(key).flags:
            return 0
        ai = self._info(key)
        if self.variant == "2.6.38":
            with calls("autofs_lookup"):
                d = self.expiring.get(key)  # autofs_lookup_expiring
                if d is not None:
                    ai.dentry = d
                self._dentry(key, hashed=True)
                ai.flags.add(NEED_AUTOMOUNT)
            return 0  # the walk that crosses it waits, in d_manage / d_automount
        hashed = self.variant in HASH_IN_LOOKUP
        with calls("autofs4_lookup"):
            d = None
            if self.variant in REUSE_EXPIRING:
                lookaside = self.variant == "lookaside"
                reuse = "autofs4_lookup_expiring" if lookaside else "autofs4_lookup_unhashed"
                with calls(reuse):
                    d = self.expiring.get(key)
            if d is not None:
                # reuse the expiring dentry (its flags kept): wait while AUTOFS_INF_EXPIRING;
                # an expire completes without the directory lock, so this cannot deadlock
                ai.dentry = d
                if self.variant != "lookaside":
                    d.inode = None  # "make the rehashed dentry negative" (rehash list)
                with calls("autofs4_expire_wait"):
                    await self.autofs4_wait(key, "expire", caller.lock)
                d = self._dentry(key, hashed=hashed)
            else:
                d = self._new_lookup_dentry(key, hashed)
            ai.flags.add(PENDING)
            wq = self.wqs.get(key)
            if wq is not None and wq.type == "expire":
                # the new dentry's mount request matches the expire's queue by name
                # (autofs4_wait looks the name up), and waits for the expire's completion
                return await self._wait_in_lookup(key, d, caller, wq)
            if not self.mounted(key):
                wq = self._post_mount(key)
                if caller.revalidate and caller.lock is None:
                    # FUSE sent a revalidation from a walk's lookup_fast, holding nothing:
                    # wait here, as autofs4_lookup did with the mutex dropped (a FUSE
                    # ->lookup always holds the parent's lock: lookup_slow, atomic_open)
                    return await self._wait_in_lookup(key, d, caller, wq)
        return 0

    def _new_lookup_dentry(self, key: bytes, hashed: bool) -> Dentry:
        """The dentry ``->lookup`` works on: the key's own if it is hashed (the VFS passed that
        one in again) or on 2576737873dc's active list, else a new one, ``d_add`` ed where the
        variant hashes in lookup and only instantiated (negative, unhashed) where it delays
        the hashing (1864f7bd: every lookup of the pending name has a dentry of its own)."""
        ai = self._info(key)
        if ai.dentry is not None and (ai.dentry.hashed or self.variant == "lookaside"):
            return ai.dentry  # lookaside: autofs4_lookup_active finds the pending one
        d = self.dc.d_alloc(ROOT, key)
        self.dc.dput(d)
        if hashed:
            self.dc.d_add(d, None)
        if ai.dentry is None or hashed:
            ai.dentry = d
        return d

    async def _wait_in_lookup(self, key: bytes, d: Dentry, caller: Caller, wq: WaitQueue) -> int:
        """``autofs4_wait`` in ``->lookup``, then its tail: an unhashed dentry is replaced by
        the hashed one ``d_lookup`` finds (the daemon's ``mkdir`` hashed its own); a lookup
        left with no positive dentry fails with ENOENT. Whether it does follows from the
        modelled dcache: nothing here knows which request woke it."""
        self.dc.dget(d)
        try:
            status = await self.autofs4_wait(key, "mount", caller.lock)
            self._info(key).flags.discard(PENDING)
            found: Dentry | None = d
            if d.unhashed:
                found = self.dc.d_lookup(ROOT, key)
                self.dc.dput(found)
            if found is None or found.negative:
                if wq.type == "expire":
                    self._lookup_enoent(key, d, wq)
                return status or -errno.ENOENT
            return status
        finally:
            self.dc.dput(d)

    async def autofs4_revalidate(self, key: bytes, caller: Caller) -> int:
        """``->d_revalidate`` of the key's hashed dentry: lock-free in a path walk
        (``lookup_fast``), under the parent's exclusive lock in a create
        (``filename_create`` -> ``lookup_one_qstr_excl``), which autofs4 could not tell.

        ``try_to_fill_dentry``: wait for an expire; a pending negative dentry waits for its
        mount whatever the lookup's intent (2.6.18: the create's wait under the lock, the
        deadlock); a positive one (the daemon's ``mkdir`` instantiated it) waits only when the
        walk continues through it (``LOOKUP_CONTINUE``/``LOOKUP_DIRECTORY``), never for a
        create's last component."""
        ai = self._info(key)
        if self.variant == "2.6.38":
            if caller.create_intent:
                return 0  # the last component of a create: no d_automount
            with calls("follow_managed"):
                if key in self.wqs and self.wqs[key].type == "expire":
                    with calls("autofs_d_manage", "autofs_expire_wait"):
                        await self.autofs4_wait(key, "expire", caller.lock)
                if not self.mounted(key):
                    ai.flags.add(NEED_AUTOMOUNT)
                    with calls("follow_automount", "autofs_d_automount"):
                        return await self.autofs4_wait(key, "mount", caller.lock)
            return 0
        with calls("autofs4_revalidate"):
            d = ai.dentry
            negative = d is None or d.negative
            if not negative and caller.create_intent:
                return 0  # positive, last component of a create: try_to_fill_dentry returns
            with calls("try_to_fill_dentry"):
                if key in self.wqs and self.wqs[key].type == "expire":
                    with calls("autofs4_expire_wait"):
                        await self.autofs4_wait(key, "expire", caller.lock)
                if not self.mounted(key):
                    return await self.autofs4_wait(key, "mount", caller.lock)
        return 0

    # -- the daemon's mkdir and rmdir (oz_mode) ----------------------------------------------------

    @fuse_op
    async def mkdir(
        self, parent_inode: InodeT, name, mode: ModeT, ctx: RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT and not self.oz_mode(ctx.pid):
            raise OSError(errno.EACCES, "autofs4_dir_mkdir: not the daemon")
        parent_inode = await self._walked_in(parent_inode, ctx)
        attr = await super().mkdir.__wrapped__(self, parent_inode, name, mode, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper
        if parent_inode == ROOT:
            with calls("autofs4_dir_mkdir"):
                ai = self._info(name)
                if ai.dentry is not None and ai.dentry.unhashed and self.variant == "1864f7bd":
                    # the daemon's own lookup missed the creators' unhashed dentry and got a
                    # new one; d_add hashes that one, the creators' stay negative, unhashed
                    ai.dentry = None
                d = self._dentry(name, hashed=True)  # d_add (lookaside: the same dentry)
                d.inode = attr.st_ino
        return attr

    @fuse_op
    async def rmdir(self, parent_inode: InodeT, name, ctx: RequestContext) -> None:
        if parent_inode == ROOT and not self.oz_mode(ctx.pid):
            raise OSError(errno.EACCES, "autofs4_dir_rmdir: not the daemon")
        parent_inode = await self._walked_in(parent_inode, ctx)
        await super().rmdir.__wrapped__(self, parent_inode, name, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper
        if parent_inode != ROOT:
            return
        ai = self._info(name)
        with calls("autofs4_dir_rmdir"):
            d, ai.dentry = ai.dentry, None
            if d is not None:
                self.dc.d_drop(d)
            ai.flags.discard(MOUNTED)
            wq = self.wqs.get(name)
            if wq is not None and wq.type == "expire":
                if self.variant in REUSE_EXPIRING | {"2.6.38"} and d is not None:
                    # the rehash list (autofs4_dir_rmdir) / autofs4_add_expiring: flags kept
                    self.expiring[name] = d
                wq.rmdir_seen.set()

    # -- the other creates and removes: in a trigger, they are the mounted volume's ---------------

    @fuse_op
    async def mknod(self, parent_inode: InodeT, name, mode: ModeT, rdev: int, ctx: RequestContext):
        parent_inode = await self._walked_in(parent_inode, ctx)
        return await super().mknod.__wrapped__(self, parent_inode, name, mode, rdev, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    @fuse_op
    async def symlink(self, parent_inode: InodeT, name, target, ctx: RequestContext):
        parent_inode = await self._walked_in(parent_inode, ctx)
        return await super().symlink.__wrapped__(self, parent_inode, name, target, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    @fuse_op
    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name, ctx: RequestContext):
        new_parent_inode = await self._walked_in(new_parent_inode, ctx)
        return await super().link.__wrapped__(self, inode, new_parent_inode, new_name, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    @fuse_op
    async def unlink(self, parent_inode: InodeT, name, ctx: RequestContext) -> None:
        parent_inode = await self._walked_in(parent_inode, ctx)
        await super().unlink.__wrapped__(self, parent_inode, name, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    @fuse_op
    async def rename(self, old: InodeT, name_old, new: InodeT, name_new, flags, ctx) -> None:
        old, new = await self._walked_in(old, ctx), await self._walked_in(new, ctx)
        await super().rename.__wrapped__(self, old, name_old, new, name_new, flags, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    @fuse_op
    async def create(self, parent_inode: InodeT, name, mode: ModeT, flags, ctx: RequestContext):
        parent_inode = await self._walked_in(parent_inode, ctx)
        return await super().create.__wrapped__(self, parent_inode, name, mode, flags, ctx)  # type: ignore[attr-defined]  # the handler under the tracking wrapper

    def list_dir(self, dh) -> list[bytes]:
        names = super().list_dir(dh)
        if dh.inode.ino == ROOT:
            names = [n for n in names if not n.startswith(b".")]
        return names

    # -- expire ----------------------------------------------------------------------------------

    async def autofs4_expire(self, key: bytes, why: str) -> str:
        """``autofs4_expire_indirect`` + ``autofs4_wait(NFY_EXPIRE)``: returns once the daemon
        removed the mount point (the expire is then waiting to be reported) or it finished."""
        ai = self.info.get(key)
        name = os.fsdecode(key)
        if ai is None or MOUNTED not in ai.flags:
            raise ValueError(f"{name}: not mounted")
        if EXPIRING in ai.flags or key in self.wqs:
            raise ValueError(f"{name}: a request is already pending")
        ai.flags.add(EXPIRING)
        wq = self._new_wq(key, "expire")
        self.count(f"expire_{why}")
        with trio.move_on_after(10.0):
            await wq.rmdir_seen.wait()
        if wq.completion.done and wq.completion.status:
            return f"expire {name} ({why}): failed: {os.strerror(-wq.completion.status)}"
        state = "done" if wq.completion.done else "mount point removed, completion pending"
        return f"expire {name} ({why}): {state} (token {wq.token})"

    async def _expire_timer(self) -> None:
        """automount's ``--timeout``: expire a key nobody looked up for that long (the daemon's
        umount fails with EBUSY while the mount is in use, and the key stays)."""
        assert self._nursery is not None
        while True:
            await trio.sleep(max(0.2, self.expire_timeout / 4))
            now = time.time()
            for key, ai in list(self.info.items()):
                if (
                    MOUNTED in ai.flags
                    and EXPIRING not in ai.flags
                    and key not in self.wqs
                    and now - ai.last_used >= self.expire_timeout
                ):
                    ai.last_used = now
                    self._nursery.start_soon(self._expire_quietly, key)

    async def _expire_quietly(self, key: bytes) -> None:
        with contextlib.suppress(ValueError):
            await self.autofs4_expire(key, "timeout")

    async def _server_op(self, request: dict[str, Any]) -> dict[str, Any]:
        """``stackfs server MOUNTPOINT expire KEY``: expire a mounted key now."""
        if request.get("action") == "expire":
            args = [str(a) for a in request.get("args", [])]
            if len(args) != 1:
                raise ValueError("server expire takes 1 argument (KEY)")
            return {"message": await self.autofs4_expire(os.fsencode(args[0]), "on demand")}
        return await super()._server_op(request)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["autofs"] = {
            "map": str(self.map_dir),
            "timeout": self.expire_timeout,
            "daemon": self.daemon.pid if self.daemon else None,
            "catatonic": self.catatonic,
            "dentries": {os.fsdecode(k): v.to_json() for k, v in self.info.items()},
            "wait_queues": [wq.to_json() for wq in self.tokens.values()],
            "expiring": [os.fsdecode(k) for k in self.expiring],
        }
        return out
