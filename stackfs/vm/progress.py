"""``stackfs vm matrix``'s progress: one line per row as the guest finishes it, and a bar on a
terminal.

The guest's ``stackfs repro run`` writes each run's ``result.json`` into the cell's results
directory, which the host shares read-write, as soon as the run is judged; the host polls the
directories of the cells that are running and prints a line for each new one. Nothing is
inferred from time: a row is printed when its result is there.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import IO


def expected_rows(scenarios: list[str], variant: str | None = None) -> int:
    """Rows a cell will produce: each scenario's variants x cases (forced mode, one run each)."""
    from stackfs.repro import registry
    from stackfs.repro.runner import plan

    total = 0
    for name in scenarios:
        scen = registry.get(name)
        try:
            total += plan(scen, variant).total
        except KeyError:  # the scenario has no such variant: `repro run` says so, no rows
            continue
    return total


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class Progress:
    """Watches the results directories of running cells (``watch``) and prints each new row."""

    def __init__(self, total: int, stream: IO[str], tty: bool, interval: float = 1.0) -> None:
        self.total = total
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.seen: set[Path] = set()
        self.dirs: dict[Path, str] = {}  # results directory -> kernel release
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vm-matrix-progress", daemon=True)

    def start(self) -> Progress:
        self._thread.start()
        return self

    def watch(self, results: Path, kernel: str) -> None:
        with self._lock:
            self.dirs[results.resolve()] = kernel

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        self.poll()
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def line(self, kernel: str, r: dict) -> str:
        case = f" ({r.get('case')})" if r.get("case") not in (None, "", "default") else ""
        verdict = "ok" if r.get("matched") else "MISMATCH"
        return (
            f"[{len(self.seen):>3}/{self.total}] {kernel}: {r.get('scenario')}{case} "
            f"{r.get('variant')}: {r.get('observed')} ({verdict}, "
            f"{float(r.get('total_seconds') or 0):.1f} s)"
        )

    def poll(self) -> None:
        with self._lock:
            dirs = dict(self.dirs)
            new = []
            for d, kernel in dirs.items():
                for res in sorted((d / "reports").glob("**/result.json")):
                    if res in self.seen or "-disturbed-" in res.parent.name:
                        continue  # a run another process disturbed is retried: not a row
                    try:
                        r = json.loads(res.read_text())
                    except (OSError, ValueError):  # being written: next poll
                        continue
                    self.seen.add(res)
                    new.append(self.line(kernel, r))
            if not new and not self.tty:
                return
            out = "".join(("\r\033[K" if self.tty else "") + ln + "\n" for ln in new)
            if self.tty:
                out += (
                    f"\r\033[K{bar(len(self.seen), self.total)} {time.monotonic() - self.t0:.0f} s"
                )
            self.stream.write(out)
            self.stream.flush()
