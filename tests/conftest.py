"""Suite-wide set-up: root and /dev/fuse, the control filesystem, and a run id that scopes
``stackfs cleanup`` to this pytest process, so a failed test never leaves a mount behind."""

from __future__ import annotations

import os
import warnings

import pytest

from stackfs.runtime import fusectl, lifecycle


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("STACKFS_RUN_ID", f"pytest-{os.getpid()}")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and not os.environ["STACKFS_RUN_ID"].endswith(f"-{worker}"):
        # pytest-xdist (./run-tests -n 2): a run id per worker, so that one worker's
        # end-of-session cleanup never touches the mounts of a worker still running
        os.environ["STACKFS_RUN_ID"] += f"-{worker}"
    fusectl.ensure_mounted()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _scale_timeouts(config, items)
    if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
        return
    skip = pytest.mark.skip(reason="mount tests need root and /dev/fuse")
    for item in items:
        if "mount" in item.keywords:
            item.add_marker(skip)


def _scale_timeouts(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``STACKFS_TIMEOUT_FACTOR=N`` multiplies every test's time limit (a VM under software
    emulation runs about ten times slower; vagrant/run-tests sets it)."""
    factor = float(os.environ.get("STACKFS_TIMEOUT_FACTOR") or 1)
    if factor == 1:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0]) if marker and marker.args else default
        if limit:
            item.add_marker(pytest.mark.timeout(limit * factor), append=False)


@pytest.fixture(scope="session", autouse=True)
def _no_leftovers():
    """After the session, remove (and complain about) any mount this run left behind."""
    yield
    actions = lifecycle.cleanup(run_id=os.environ["STACKFS_RUN_ID"])
    if actions:
        warnings.warn(f"the test run left mounts behind: {actions}", stacklevel=1)


@pytest.fixture
def stack(tmp_path):
    """A :class:`stackfs.runtime.lifecycle.Stack` that goes down after the test, whatever
    happened."""
    with lifecycle.Stack(log_dir=tmp_path / "logs") as st:
        yield st
