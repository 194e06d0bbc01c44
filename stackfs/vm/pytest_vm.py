"""``pytest --stackfs-kernel K``: run the selected tests inside ``stackfs vm`` on kernel K.

The host collects as usual (``-k``, ``-m``, node ids select), then, instead of running the
tests, boots each kernel once (:func:`stackfs.vm.boot.run`) and runs ``python -m pytest NODEID...``
in the guest, in the same directory. The guest's pytest (this same plugin, in the guest) writes
every test report through pytest's own serialization hook (the one pytest-xdist uses) as JSON
lines into the shared results directory; the host reads them back and reports them as its own:
the terminal summary, ``--junitxml``, exit status are the host's. With several kernels
(``--stackfs-kernel 6.1 --stackfs-kernel 6.12`` or ``6.1,6.12``) each test is reported once per
kernel, its node id suffixed ``@RELEASE``. A test the guest did not report (the VM did not boot,
a crash) fails on the host with the reason. Under software emulation (no KVM) the guest's time
limits are scaled (``STACKFS_TIMEOUT_FACTOR=5`` unless set).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Literal

import pytest

from stackfs.vm import boot, kernels
from stackfs.vm.guest import GUEST_ENV

REPORTS_ENV = "STACKFS_VM_PYTEST_REPORTS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stackfs")
    group.addoption(
        "--stackfs-kernel",
        action="append",
        default=[],
        metavar="K",
        help="run the selected tests in a VM on kernel K (stackfs vm: a release, a prefix such "
        "as 6.1, 'running' or a vmlinuz path); repeat or comma-separate for several kernels",
    )
    group.addoption(
        "--stackfs-vm-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="stop a --stackfs-kernel VM after S seconds (default 3600)",
    )


def _kernel_specs(config: pytest.Config) -> list[str]:
    return [s for opt in config.getoption("stackfs_kernel") or [] for s in opt.split(",") if s]


def pytest_configure(config: pytest.Config) -> None:
    if _kernel_specs(config) and not os.environ.get(GUEST_ENV):
        try:
            config.stash[_KERNELS] = [kernels.resolve(s) for s in _kernel_specs(config)]
        except kernels.KernelError as exc:
            raise pytest.UsageError(f"--stackfs-kernel: {exc}") from None


_KERNELS = pytest.StashKey[list]()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the guest: every report, serialized, one JSON line for the host."""
    path = os.environ.get(REPORTS_ENV)
    if not path or not os.environ.get(GUEST_ENV):
        return
    config = _CONFIG.get("config")
    if config is None:
        return
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    with open(path, "a") as f:
        f.write(json.dumps(data, default=str) + "\n")


_CONFIG: dict[str, pytest.Config] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


def _guest_cmd(session: pytest.Session, reports: Path, kvm: bool) -> list[str]:
    env = [f"{REPORTS_ENV}={reports}", f"STACKFS_TIMEOUT_FACTOR={boot.timeout_factor(kvm)}"]
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN"]
    return ["env", *env, *args, *(item.nodeid for item in session.items)]


def _report(session: pytest.Session, rep: pytest.TestReport) -> None:
    hook = session.config.hook
    if rep.when == "setup":
        hook.pytest_runtest_logstart(nodeid=rep.nodeid, location=rep.location)
    hook.pytest_runtest_logreport(report=rep)
    if rep.when == "teardown":
        hook.pytest_runtest_logfinish(nodeid=rep.nodeid, location=rep.location)


def _missing(item: pytest.Item, nodeid: str, why: str) -> list[pytest.TestReport]:
    loc = item.location
    kw: dict[str, Literal[1]] = {k: 1 for k in item.keywords}
    return [
        pytest.TestReport(nodeid, loc, kw, "passed", None, "setup"),
        pytest.TestReport(nodeid, loc, kw, "failed", why, "call"),
        pytest.TestReport(nodeid, loc, kw, "passed", None, "teardown"),
    ]


def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """On the host with --stackfs-kernel: run the session's items in the VM(s) instead."""
    ks = session.config.stash.get(_KERNELS, None)
    if not ks or os.environ.get(GUEST_ENV):
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} errors during collection")
    if session.config.option.collectonly or not session.items:
        return True
    timeout = session.config.getoption("stackfs_vm_timeout")
    for k in ks:
        results = Path(tempfile.mkdtemp(prefix=f"stackfs-vm-pytest-{k.release}-"))
        reports = results / "reports.jsonl"
        reports.touch()
        try:
            vm = boot.run(
                k,
                _guest_cmd(session, reports, boot.kvm_usable()),
                results,
                timeout=timeout,
                cwd=session.config.rootpath,
            )
            why = f"timed out after {timeout:g} s" if vm.timed_out else f"guest exit {vm.status}"
        except boot.VMError as exc:
            why = str(exc)
        suffix = f"@{k.release}" if len(ks) > 1 else ""
        seen = set()
        for line in reports.read_text().splitlines():
            rep = session.config.hook.pytest_report_from_serializable(
                config=session.config, data=json.loads(line)
            )
            if not isinstance(rep, pytest.TestReport):
                continue
            seen.add(rep.nodeid)
            rep.nodeid += suffix
            rep.user_properties.append(("kernel", k.release))
            _report(session, rep)
        for item in session.items:
            if item.nodeid not in seen:
                msg = f"not run in the VM on {k.release}: {why} (results, dmesg: {results})"
                for rep in _missing(item, item.nodeid + suffix, msg):
                    _report(session, rep)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"stackfs vm: {k.release}: {len(seen)} tests reported from the guest; "
                f"results and dmesg in {results}"
            )
    return True
