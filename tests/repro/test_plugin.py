"""The pytest plugin as a filesystem developer uses it: short regression tests that mount a
stack, run real processes under the watchdog and assert what happened."""

from __future__ import annotations

import pytest

from stackfs.pytest_plugin import assert_does_not_reproduce, assert_reproduces


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_copy_up_over_buggy_afs_deadlocks(stackfs_union_over, stackfs_watchdog):
    s = stackfs_union_over("afs", variant="buggy", copyup="aufs", files={"f": "v1\n"})
    s.sh("cat", s.top / "f")  # the kernel caches the AFS file's pages
    s.server("write", "f", "v2\n")  # another client: the data version moves
    outcome = stackfs_watchdog.run(["mv", s.top / "f", s.top / "g"])
    assert_reproduces(outcome, "deadlock", blocked="mv", lock_via="osi_VM_FlushPages")
    assert outcome.recovered
    assert "possible recursive locking detected" in outcome.text()


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.does_not_reproduce
def test_copy_up_with_unlock_completes(stackfs_union_over, stackfs_watchdog):
    s = stackfs_union_over("afs", variant="buggy", copyup="aufs-unlock", files={"f": "v1\n"})
    s.sh("cat", s.top / "f")
    s.server("write", "f", "v2\n")
    stackfs_watchdog.run(["mv", s.top / "f", s.top / "g"])
    assert (s.top / "g").read_text() == "v2\n"  # the copy has the server's new data
    assert (s.upper / "g").read_text() == "v2\n"
    assert not (s.top / "f").exists()


@pytest.mark.mount
@pytest.mark.timeout(60)
@pytest.mark.reproduces("deadlock", blocked="sh")
def test_marker_open_for_write(stackfs_union_over, stackfs_watchdog):
    s = stackfs_union_over("afs", variant="buggy", copyup="aufs", files={"f": "v1\n"})
    s.sh("cat", s.top / "f")
    s.server("write", "f", "v2\n")
    stackfs_watchdog.run(["sh", "-c", f"echo more >> {s.top / 'f'}"])


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_fixed_afs_alone(stackfs_backend, stackfs_stack, stackfs_watchdog):
    afs = stackfs_backend("afs", variant="fixed", files={"d/f": "old\n"})
    stackfs_stack.sh(["cat", afs.mnt / "d/f"])
    stackfs_stack.server("afs", "write", "d/f", "new\n")
    outcome = stackfs_watchdog.run(["cat", afs.mnt / "d/f"])
    assert_does_not_reproduce(outcome)
    assert outcome.processes[0].stdout == "new\n"


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_assert_reproduces_fails_on_a_completed_run(stackfs_union_over, stackfs_watchdog):
    s = stackfs_union_over("afs", variant="fixed", copyup="aufs", files={"f": "v1\n"})
    outcome = stackfs_watchdog.run(["cat", s.top / "f"])
    with pytest.raises(AssertionError, match="observed completes"):
        assert_reproduces(outcome, "deadlock")
