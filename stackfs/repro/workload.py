"""The workload: real processes started together, watched, and always reaped.

A process that is stuck in the kernel (a FUSE wait, state D) cannot be killed until its
connection is aborted; :meth:`Workload.reap` is called after recovery and kills, by the pids it
started, whatever is still there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackfs.repro.scenario import Proc

if TYPE_CHECKING:
    from stackfs.runtime.cgroup import RunCgroup

#: strerror text (C locale: Python never sets LC_MESSAGES) -> errno, longest message first,
#: to read "cat: f: Stale file handle" back into ESTALE
_STRERROR = sorted(
    {os.strerror(n): n for n in sorted(errno.errorcode, reverse=True)}.items(),
    key=lambda item: -len(item[0]),
)
#: the errno number a Python OSError prints: ``FileNotFoundError: [Errno 2] No such file ...``
_PY_ERRNO = re.compile(r"\[Errno (\d+)\]")


def workload_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a workload process: ``env`` (default: ours) in the C locale, so its
    error messages are the untranslated strerror text that :func:`errno_in` reads back."""
    out = dict(os.environ if env is None else env)
    for var in ("LANGUAGE", "LANG", "LC_MESSAGES"):
        out.pop(var, None)
    out["LC_ALL"] = "C"
    return out


def errno_in(text: str) -> int | None:
    """The errno a process reported in ``text``, read from the last line that has one: the
    number itself where the message carries it (Python's ``[Errno N]``), else the C-locale
    strerror text that ends the line (coreutils' ``prog: file: message``)."""
    for line in reversed(text.strip().splitlines()):
        m = _PY_ERRNO.search(line)
        if m and int(m.group(1)) in errno.errorcode:
            return int(m.group(1))
        tail = line.rstrip()
        for msg, code in _STRERROR:
            if tail.endswith(msg):
                return code
    return None


@dataclass
class ProcResult:
    """What one workload process did."""

    label: str
    argv: list[str]
    pid: int
    comm: str
    started: float
    ended: float | None = None
    status: int | None = None
    stdout: str = ""
    stderr: str = ""
    #: killed by the runner after recovery (it was still there)
    killed: bool = False
    ok_status: tuple[int, ...] | None = (0,)

    @property
    def exited(self) -> bool:
        return self.status is not None and not self.killed

    @property
    def ok(self) -> bool:
        return self.exited and (self.ok_status is None or self.status in self.ok_status)

    @property
    def errno(self) -> int | None:
        return errno_in(self.stderr) if self.stderr else None

    def render(self) -> str:
        if self.status is None:
            how = "still running"
        elif self.killed:
            how = "killed after recovery"
        elif self.status < 0:
            how = f"killed by {signal.Signals(-self.status).name}"
        else:
            how = f"exit {self.status}"
        err = self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""
        return f"{self.label} [{self.comm}/{self.pid}]: {how}" + (f" ({err})" if err else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "argv": self.argv,
            "pid": self.pid,
            "comm": self.comm,
            "started": self.started,
            "ended": self.ended,
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "killed": self.killed,
            "ok": self.ok,
        }


@dataclass
class Workload:
    """Processes started by :meth:`start`; outputs go to files in ``out_dir``."""

    out_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    results: list[ProcResult] = field(default_factory=list)
    started: float = 0.0
    #: gated start: the write end of each process's gate pipe (-1 once opened)
    gates: list[int] = field(default_factory=list)

    def start(
        self,
        specs: list[Proc],
        env: Mapping[str, str] | None = None,
        gated: bool = False,
        cgroup: RunCgroup | None = None,
    ) -> None:
        """Start every process of ``specs`` (in its own session, in the C locale; in
        ``cgroup``, the run's, before it execs: :meth:`stackfs.runtime.cgroup.RunCgroup.wrap`).

        ``gated`` (a scheduled run): each process starts as ``sh`` blocked reading a pipe, and
        execs its command once :meth:`open_gate` writes to it (or the pipe closes): the
        scheduler decides when each process really starts. Its pid is the command's from the
        start; ``Proc.delay`` is ignored (the schedule decides)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        for i, spec in enumerate(specs):
            if spec.delay > 0 and not gated:
                time.sleep(spec.delay)
            argv = spec.command()
            cmd, stdin = argv, subprocess.DEVNULL
            if gated:  # the gate is sh's stdin; the command gets /dev/null, as ungated
                r, w = os.pipe()
                self.gates.append(w)
                cmd = ["/bin/sh", "-c", 'read _; exec "$@" </dev/null', "sh", *argv]
                stdin = r
            if cgroup is not None:
                cmd = cgroup.wrap(cmd)
            out = open(self.out_dir / f"proc{i}.out", "wb")  # noqa: SIM115 - closed below
            err = open(self.out_dir / f"proc{i}.err", "wb")  # noqa: SIM115
            try:
                p = subprocess.Popen(
                    cmd,
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    cwd=os.fspath(spec.cwd) if spec.cwd else None,
                    env=workload_env(env),
                    start_new_session=True,
                )
            finally:
                out.close()
                err.close()
                if stdin != subprocess.DEVNULL:
                    os.close(stdin)
            self.procs.append(p)
            self.results.append(
                ProcResult(
                    label=spec.name(),
                    argv=argv,
                    pid=p.pid,
                    # what exec sets (/proc/PID/comm may still show the parent's name here:
                    # the exec's close-on-exec of Popen's pipe comes before the comm change)
                    comm=os.path.basename(argv[0])[:15],
                    started=time.time(),
                    ok_status=spec.ok_status,
                )
            )

    def open_gate(self, i: int) -> None:
        """Let gated process ``i`` exec its command (closing the pipe does it too)."""
        w, self.gates[i] = self.gates[i], -1
        if w >= 0:
            with contextlib.suppress(OSError):
                os.write(w, b"go\n")
            os.close(w)

    def open_gates(self) -> None:
        for i in range(len(self.gates)):
            self.open_gate(i)

    def poll(self) -> bool:
        """Collect exits; True when every process has exited."""
        done = True
        for i, p in enumerate(self.procs):
            r = self.results[i]
            if r.status is None:
                status = p.poll()
                if status is None:
                    done = False
                    continue
                r.status, r.ended = status, time.time()
                self._read_output(i)
        return done

    def all_exited(self) -> bool:
        return self.poll()

    def running(self) -> list[ProcResult]:
        self.poll()
        return [r for r in self.results if r.status is None]

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def reap(self, grace: float = 1.0) -> list[ProcResult]:
        """Wait ``grace`` for the processes to exit (after recovery they get ECONNABORTED),
        then SIGKILL the rest, by the pids we started. Returns those that had to be killed."""
        self.open_gates()
        self.wait(grace)
        killed = []
        for i, p in enumerate(self.procs):
            r = self.results[i]
            if r.status is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            try:
                r.status = p.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                r.status = None  # unkillable: still in D state; the report says so
                continue
            r.ended, r.killed = time.time(), True
            self._read_output(i)
            killed.append(r)
        return killed

    def _read_output(self, i: int) -> None:
        r = self.results[i]
        for attr, suffix in (("stdout", "out"), ("stderr", "err")):
            try:
                data = (self.out_dir / f"proc{i}.{suffix}").read_bytes()
            except OSError:
                continue
            setattr(r, attr, data[-65536:].decode(errors="replace"))
