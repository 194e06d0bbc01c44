"""The Lustre personality (seed 002): a client that opens files by FID, one daemon per mount.

The store is the MDT's namespace; every mount of it (``stackfs backend mount lustre --store
SAME``) is another Lustre client with its own daemon, so "another client renamed over the file"
is a real ``mv`` on the second mount. A FID is the store object's identity (:mod:`backends.mdt`);
the MDT answers ENOENT for an object that is gone (renamed over or unlinked), and every client
with ``-o mdt=DIR`` logs its requests there, so the report can show both clients' requests on one
time line.

What the kernel does for real (FUSE, shared/NOTES.md): the path walk, the revalidating LOOKUP
before each open (``entry_timeout=0``), the OPEN by node id after it, and the VFS's single retry
of an open that failed with ESTALE (``do_filp_open`` -> ``path_openat(... | LOOKUP_REVAL)``),
whose walk sends a fresh LOOKUP. What is modelled, after lustre/llite:

``ll_revalidate_dentry`` (llite/dcache.c)
    A FUSE LOOKUP does not carry the VFS's lookup flags, so the daemon reads them off the caller
    (:mod:`backends.intent`: an open(2) of this name is LOOKUP_OPEN, with O_CREAT also
    LOOKUP_CREATE) and off its own history (the same task's OPEN of this syscall failed with
    ESTALE: this walk is the LOOKUP_REVAL retry). A dentry that revalidates is *trusted*: the
    LOOKUP answers the name's FID and the open that follows goes by FID (``ll_file_open``). A
    refused one goes the lookup path, ``ll_lookup_it`` with an IT_OPEN intent: the MDT looks the
    name up *and opens it* in one RPC (``DISP_OPEN_OPEN``); the open handle is parked for that
    task's OPEN, which uses it, so nothing can come between the name and the open.
``ll_file_open`` / ``ll_intent_file_open`` (llite/file.c)
    The OPEN of a trusted dentry opens by FID (``md_intent_lock`` with the inode's FID, no
    name): if another client destroyed the object since the LOOKUP, the MDT says ENOENT, which
    the variant passes up as is or turns into ESTALE (so that the VFS retries).

Variants (``ll_revalidate_dentry`` / what the open by FID returns for a vanished FID):

``buggy`` (the seed's 2016 client)
    refuses OPEN|CREATE (creates open by name, at the lookup); ENOENT as is, so a plain open
    (``cat``) racing a rename fails with ENOENT: Lustre's sanityn 31r failing.
``lu-8371``
    trusts every dentry but refuses LOOKUP_REVAL ("the second go around ... talk to the server
    via the lookup path by name, not by fid"); ENOENT becomes ESTALE for O_CREAT opens, so
    their single retry opens by name. A plain open still fails with ENOENT.
``lu-14949``
    as lu-8371, with ENOENT -> ESTALE for every open: ``cat`` retries by name too.
``estale-by-fid``
    the seed's own proposal taken literally: trust every dentry, also on the retry, and turn
    ENOENT into ESTALE for creates. The retry looks the name up (FUSE's REVAL LOOKUP) and opens
    the new FID by FID again: "it's only once so for a contended file" a rename during the
    retry makes ESTALE reach the process.

Injection points: ``ll_file_open`` (OBD_FAIL_LLITE_OPEN_DELAY, sanityn 31r's delay before the
open by FID) and ``mdt_reint_rename`` (the MDT's rename of this client). Forced mode orders the
two clients with waits on what the MDT observed (``-o open_waits_rename=S``,
``-o rename_waits_open=S``), never with a timer: each ends as soon as the other client's request
is there, and gives up after S seconds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FileNameT, FlagT, InodeT, RequestContext

from backends.base import Inode, Option, StoreFS, fuse_op
from backends.intent import Intent, syscall_intent
from backends.mdt import MdtLog, Request, fid_of
from stackfs.kernel.task import Task, calls, running_as
from stackfs.linux import proc

#: the VFS and llite above an OPEN by FID
OPEN_BY_FID_CHAIN = (
    "entry_SYSCALL_64_fastpath",
    "sys_open",
    "do_sys_open",
    "do_filp_open",
    "path_openat",
    "do_dentry_open",
    "ll_file_open",
    "ll_intent_file_open",
    "md_intent_lock",
)
RENAME_CHAIN = (
    "entry_SYSCALL_64_fastpath",
    "sys_renameat2",
    "vfs_rename",
    "ll_rename",
    "md_rename",
    "mdt_reint_rename",
)
#: how long an intent open waits for its task's OPEN, and a REVAL mark for its LOOKUP
_PARK_SECONDS = 5.0
_POLL = 0.002


class LustreFS(StoreFS):
    """A Lustre client over the store (the MDT's namespace)."""

    kind = "lustre"
    variants = {
        "buggy": "2016 client: revalidate refuses OPEN|CREATE; the MDT's ENOENT for a vanished "
        "FID reaches the caller as is (seed 002)",
        "lu-8371": "trust dentries, refuse LOOKUP_REVAL (the retry opens by name); ENOENT from "
        "an O_CREAT open by FID becomes ESTALE",
        "lu-14949": "as lu-8371, and ENOENT from every open by FID becomes ESTALE",
        "estale-by-fid": "the seed's proposal: ENOENT -> ESTALE for creates, but the retry is "
        "trusted and opens by FID again",
    }
    injection_points = {
        "ll_file_open": "ll_file_open, before ll_intent_file_open opens by FID "
        "(OBD_FAIL_LLITE_OPEN_DELAY)",
        "mdt_reint_rename": "this client's rename at the MDT, before it happens",
    }
    extra_options = (
        Option(
            "mdt",
            str,
            "",
            "directory shared by the client mounts of the store: the MDT's "
            "request log (empty: no log)",
        ),
        Option("client", str, "", "this client's name in the MDT's log (default client-PID)"),
        Option(
            "open_waits_rename",
            float,
            0.0,
            "forced mode: an open by FID waits up to S seconds for its FID to vanish at "
            "the MDT (another client's rename or unlink)",
        ),
        Option(
            "rename_waits_open",
            float,
            0.0,
            "forced mode (needs mdt): a rename waits up to S seconds until another client "
            "has looked its target up for an open (or has opened the name already)",
        ),
    )
    option_defaults = {"entry_timeout": 0.0, "attr_timeout": 0.0}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.client = str(self.opts["client"]) or f"client-{os.getpid()}"
        self.mdt = MdtLog(self.opts["mdt"]) if self.opts["mdt"] else None
        self.open_waits_rename = float(self.opts["open_waits_rename"])
        self.rename_waits_open = float(self.opts["rename_waits_open"])
        #: (tid, ino) -> (descriptor of the intent open, when): DISP_OPEN_OPEN handles
        self.parked: dict[tuple[int, int], tuple[int, float]] = {}
        #: tid -> (/proc/TID/syscall, when) of an open whose OPEN by FID failed with ESTALE
        self.reval: dict[int, tuple[str, float]] = {}

    # -- the MDT's log -------------------------------------------------------------------------

    def mdt_log(self, task: Task, op: str, name: bytes, **kw: Any) -> None:
        if self.mdt is None:
            return
        with contextlib.suppress(OSError):
            self.mdt.append(
                Request(time.time(), self.client, task.pid, task.comm, op, os.fsdecode(name), **kw)
            )

    @staticmethod
    async def wait_for(cond: Callable[[], bool], seconds: float) -> bool:
        """Forced mode: wait until ``cond()`` (what the MDT observed), at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while not cond():
            if time.monotonic() >= deadline:
                return False
            await trio.sleep(_POLL)
        return True

    def fid(self, inode: Inode) -> str:
        return fid_of(os.fstat(inode.fd))

    # -- ll_revalidate_dentry and the lookup path ----------------------------------------------

    def is_reval(self, tid: int) -> bool:
        """This LOOKUP is the VFS's LOOKUP_REVAL walk: the same task, in the same system call,
        had its OPEN by FID fail with ESTALE just before."""
        mark = self.reval.get(tid)
        if mark is None:
            return False
        if time.monotonic() - mark[1] > _PARK_SECONDS:
            del self.reval[tid]
            return False
        return mark[0] == proc.settled_syscall_text(tid)

    def ll_revalidate_dentry(self, intent: Intent, reval: bool) -> bool:
        """Whether the cached dentry is trusted (1) or refused (0), per variant."""
        create = bool(intent.flags & os.O_CREAT)
        if self.variant == "buggy":
            return not (intent.open and create)  # (LOOKUP_OPEN | LOOKUP_CREATE) -> 0
        if self.variant in ("lu-8371", "lu-14949"):
            return not reval  # LOOKUP_REVAL -> 0: "talk to the server ... by name, not by fid"
        return True  # estale-by-fid: always trusted

    def ll_open_error(self, flags: int) -> int:
        """What the open by FID returns when the MDT answered ENOENT, per variant."""
        if self.variant == "lu-14949":
            return errno.ESTALE
        if self.variant in ("lu-8371", "estale-by-fid") and flags & os.O_CREAT:
            return errno.ESTALE
        return errno.ENOENT

    def _park(self, tid: int, inode: Inode, fd: int) -> None:
        now = time.monotonic()
        for key, (old, when) in list(self.parked.items()):
            if key == (tid, inode.ino) or now - when > _PARK_SECONDS:
                del self.parked[key]
                with contextlib.suppress(OSError):
                    os.close(old)
        self.parked[(tid, inode.ino)] = (fd, now)

    def ll_lookup_it_open(
        self, parent: Inode, name: bytes, flags: int, tid: int
    ) -> tuple[Inode, os.stat_result]:
        """``ll_lookup_it`` with IT_OPEN: the MDT resolves the name and opens the object in one
        RPC; the handle waits for this task's OPEN (``DISP_OPEN_OPEN``)."""
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            st = os.fstat(pfd)
            ofd = None
            if stat.S_ISREG(st.st_mode):
                acc = flags & os.O_ACCMODE
                ofd = os.open(f"/proc/self/fd/{pfd}", acc | os.O_CLOEXEC)
        except OSError:
            os.close(pfd)
            raise
        inode = self.remember(pfd, st, parent, name)
        if ofd is not None:
            self._park(tid, inode, ofd)
        self.count("intent_open_by_name")
        return inode, self.overlay_stat(inode, st)

    async def lookup_entry(self, parent: Inode, name: bytes, ctx) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            return await super().lookup_entry(parent, name, ctx)
        intent = syscall_intent(ctx.pid, name)
        task = Task.from_pid(ctx.pid)
        reval = intent.open and self.is_reval(ctx.pid)
        trusted = self.ll_revalidate_dentry(intent, reval)
        how = "revalidate" if trusted else "intent-open"
        self.count("lookup")
        with running_as(task), calls(*intent.chain()):
            try:
                if intent.open and not trusted:
                    with calls("lookup_open", "ll_atomic_open", "ll_lookup_it"):
                        inode, st = self.ll_lookup_it_open(parent, name, intent.flags, ctx.pid)
                else:
                    with calls("lookup_fast", "ll_revalidate_dentry"):
                        inode, st = self.lookup_store(parent, name)
            except OSError as exc:
                self.mdt_log(
                    task,
                    "LOOKUP",
                    name,
                    how=how,
                    open_intent=intent.open,
                    create=bool(intent.flags & os.O_CREAT),
                    reval=reval,
                    result=errno.errorcode.get(exc.errno or 0, "EIO"),
                )
                raise
        self.mdt_log(
            task,
            "LOOKUP",
            name,
            fid=fid_of(st),
            how=how,
            open_intent=intent.open,
            create=bool(intent.flags & os.O_CREAT),
            reval=reval,
        )
        inode.nlookup += 1
        return self.entry(inode, st)

    # -- ll_file_open ----------------------------------------------------------------------------

    async def open_inode(self, inode: Inode, flags: int, ctx) -> int:
        tid = ctx.pid
        task = Task.from_pid(tid)
        name = inode.name
        self.reval.pop(tid, None)
        parked = self.parked.pop((tid, inode.ino), None)
        if parked is not None:
            fd = parked[0]
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
            self.mdt_log(task, "OPEN", name, fid=self.fid(inode), how="intent")
            return fd
        fid = self.fid(inode)
        with running_as(task), calls(*OPEN_BY_FID_CHAIN):
            await self.kernel.inject.hit("ll_file_open")
            if self.open_waits_rename > 0:
                await self.wait_for(lambda: self.object_gone(inode), self.open_waits_rename)
            self.count("open_by_fid")
            if self.object_gone(inode):
                # FUSE_OPEN's flags lack O_CREAT (the kernel strips it): the syscall has it
                intent = syscall_intent(tid, name)
                err = self.ll_open_error(flags | intent.flags)
                self.count("open_" + errno.errorcode[err].lower())
                if err == errno.ESTALE:
                    self.reval[tid] = (intent.raw, time.monotonic())
                self.mdt_log(task, "OPEN", name, fid=fid, how="by-fid", result=errno.errorcode[err])
                raise OSError(err, f"open by FID {fid}: the MDT has no such object")
            fd = await super().open_inode(inode, flags, ctx)
        self.mdt_log(task, "OPEN", name, fid=fid, how="by-fid")
        return fd

    # -- the namespace as the MDT sees it -----------------------------------------------------

    def _target_fid(self, parent: Inode, name: bytes) -> str | None:
        try:
            return fid_of(os.stat(name, dir_fd=parent.fd, follow_symlinks=False))
        except OSError:
            return None

    @fuse_op
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: RequestContext,
    ) -> None:
        old_parent = self.inode(parent_inode_old)
        new_parent = self.inode(parent_inode_new)
        task = Task.from_pid(ctx.pid)
        moved = self._target_fid(old_parent, name_old)
        target = self._target_fid(new_parent, name_new)
        with running_as(task), calls(*RENAME_CHAIN):
            await self.kernel.inject.hit("mdt_reint_rename")
            if target is not None and self.rename_waits_open > 0 and self.mdt is not None:
                mdt = self.mdt
                other = os.fsdecode(name_new)
                await self.wait_for(
                    lambda: (
                        mdt.looked_up_for_open(target, self.client)
                        or mdt.opened(other, self.client)
                    ),
                    self.rename_waits_open,
                )
        try:
            await super().rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx)
        except pyfuse3.FUSEError as exc:
            self.mdt_log(
                task,
                "RENAME",
                name_new,
                fid=moved,
                replaced=target,
                result=errno.errorcode.get(exc.errno, "EIO"),
            )
            raise
        self.mdt_log(
            task,
            "RENAME",
            name_new,
            fid=moved,
            replaced=target,
            extra={"from": os.fsdecode(name_old)},
        )

    @fuse_op
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self.inode(parent_inode)
        fid = self._target_fid(parent, name)
        await super().unlink(parent_inode, name, ctx)
        self.mdt_log(Task.from_pid(ctx.pid), "UNLINK", name, fid=fid)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["client"] = self.client
        out["mdt"] = str(self.mdt.path) if self.mdt else None
        out["parked_intent_opens"] = [
            {"tid": tid, "ino": ino, "age": round(time.monotonic() - when, 3)}
            for (tid, ino), (_fd, when) in self.parked.items()
        ]
        out["reval_pending"] = sorted(self.reval)
        out["forced_waits"] = {
            "open_waits_rename": self.open_waits_rename,
            "rename_waits_open": self.rename_waits_open,
        }
        return out
