"""The autofs personality (seed 001) and its automount daemon, on real mounts.

* A lookup of a map key mounts it: the daemon (``stackfs automountd``, a service process with a
  run directory) makes the mount point through the mount and bind-mounts the map entry; the
  walk crosses into the real mount. Non-keys are ENOENT; only the daemon may mkdir in the root.
* ``stackfs server MOUNTPOINT expire KEY`` unmounts the key and removes the mount point; the
  next lookup mounts it again. An idle timeout expires it too.
* Nothing is left afterwards: unmounting the autofs mount takes the daemon's bind mounts down
  and reaps the daemon; a SIGKILLed backend daemon's automounter exits on its own.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stackfs.runtime import control, lifecycle, mountinfo, service

pytestmark = [pytest.mark.mount, pytest.mark.timeout(60)]


def _autofs(mount_backend, *extra: str) -> tuple[lifecycle.Mount, Path]:
    m = mount_backend("autofs", "-o", "timeout=0", *extra, name="auto")
    store: Path = m.store  # type: ignore[attr-defined]
    (store / ".map" / "proj").mkdir(parents=True, exist_ok=True)
    (store / ".map" / "proj" / "README").write_text("the volume\n")
    return m, store


def _submounts(mp: Path) -> list[str]:
    prefix = str(mp) + "/"
    return [e.mountpoint for e in mountinfo.mounts() if e.mountpoint.startswith(prefix)]


def _daemon_pid(m: lifecycle.Mount) -> int:
    return int(m.control({"op": "state"})["daemon"]["autofs"]["daemon"])


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (
            not os.path.exists(f"/proc/{pid}")
            or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
        ):
            return True
        time.sleep(0.05)
    return False


def test_lookup_mounts_the_map_entry(mount_backend):
    m, store = _autofs(mount_backend)
    mp = m.mountpoint
    assert (mp / "proj" / "README").read_text() == "the volume\n"
    assert _submounts(mp) == [str(mp / "proj")]  # a real bind mount on the mount point
    assert (store / "proj").is_dir()  # made by the daemon's mkdir through the mount
    assert os.listdir(mp) == ["proj"]  # the map and the triggers are hidden
    with pytest.raises(FileNotFoundError):
        os.stat(mp / "nokey")
    with pytest.raises(PermissionError):
        os.mkdir(mp / "other")  # autofs4_dir_mkdir: only the daemon (oz_mode)
    st = m.control({"op": "state"})
    auto = st["daemon"]["autofs"]
    assert "d_mountpoint" in auto["dentries"]["proj"]["flags"]
    # the daemon is a service (no mount of its own), found by its run directory
    svc = service.running()[auto["daemon"]]
    assert svc["kind"] == "automount" and svc["mountpoint"] is None
    assert st["completions"] == []  # nothing pending


def test_expire_on_demand_and_remount(mount_backend):
    m, store = _autofs(mount_backend)
    mp = m.mountpoint
    assert os.listdir(mp / "proj") == ["README"]
    msg = control.query(mp, {"op": "server", "action": "expire", "args": ["proj"]})["message"]
    assert msg.startswith("expire proj")
    # the expire is over when its completion is reported (the server op may return while it is
    # still pending): a lookup before that is in the expire's window, where the modelled
    # kernels of this variant answer ENOENT (seed 001's follow-on race; autofs-expire)
    end = time.monotonic() + 5
    while (_submounts(mp) or m.control({"op": "state"})["completions"]) and (
        time.monotonic() < end
    ):
        time.sleep(0.05)
    assert _submounts(mp) == [] and not (store / "proj").exists()
    assert m.control({"op": "state"})["completions"] == []
    assert (mp / "proj" / "README").read_text() == "the volume\n"  # mounted again
    with pytest.raises(control.ControlError):
        control.query(mp, {"op": "server", "action": "expire", "args": ["nokey"]})


def test_idle_timeout_expires(mount_backend):
    m = mount_backend("autofs", "-o", "timeout=0.5", name="auto")
    store: Path = m.store  # type: ignore[attr-defined]
    (store / ".map" / "proj").mkdir(parents=True)
    os.listdir(m.mountpoint / "proj")
    assert _submounts(m.mountpoint)
    end = time.monotonic() + 10
    while _submounts(m.mountpoint) and time.monotonic() < end:
        time.sleep(0.1)
    assert _submounts(m.mountpoint) == []
    assert m.control({"op": "state"})["daemon"]["stats"].get("expire_timeout", 0) >= 1


def test_busy_mount_does_not_expire(mount_backend):
    m, _store = _autofs(mount_backend)
    os.listdir(m.mountpoint / "proj")  # mounted; the chdir below crosses into the mount
    proc = subprocess.Popen(["sleep", "30"], cwd=m.mountpoint / "proj")
    try:
        msg = control.query(m.mountpoint, {"op": "server", "action": "expire", "args": ["proj"]})[
            "message"
        ]
        assert os.strerror(errno.EBUSY) in msg
        assert _submounts(m.mountpoint)
    finally:
        proc.kill()
        proc.wait()


def test_unmount_takes_everything_down(mount_backend):
    m, _store = _autofs(mount_backend)
    os.listdir(m.mountpoint / "proj")
    daemon = _daemon_pid(m)
    report = lifecycle.unmount(m)
    assert report.clean
    assert _submounts(m.mountpoint) == [] and mountinfo.find(m.mountpoint) is None
    assert _wait_gone(daemon)


def test_sigkill_of_the_backend_reaps_the_automounter(mount_backend):
    m, _store = _autofs(mount_backend)
    os.listdir(m.mountpoint / "proj")
    daemon = _daemon_pid(m)
    os.kill(m.pid, signal.SIGKILL)
    assert _wait_gone(daemon)  # parent-death signal / pipe EOF: it detaches its mounts, exits
    # the autofs mount itself is the stack's to clean up (aborted, detached) at teardown


def test_map_and_trigger_directories_are_not_writable_by_others(mount_backend):
    """The daemon runs with umask(0) (modes arrive masked by the caller's umask); the
    directories it makes for itself are 0755 all the same: a map others could write would have
    root's automounter bind-mount whatever they put there (issue 21)."""
    m, store = _autofs(mount_backend)
    assert (m.mountpoint / "proj" / "README").exists()  # a lookup made a trigger directory
    for d in (store / ".map", store / ".autofs", store / ".autofs" / "proj"):
        assert d.stat().st_mode & 0o777 == 0o755, d


def test_1864f7bd_second_creator_misses_the_unhashed_dentry(mount_backend):
    """Commit 1864f7bd (issue 23 item 1): ``->lookup`` leaves the key's dentry unhashed until
    the daemon's ``mkdir`` hashes one. A second ``mkdir`` of the name while the mount request
    is pending (the daemon callback held 3 s) misses it in the modelled dcache and is a
    ``->lookup`` (answered at once: EEXIST), never a ``->d_revalidate`` under the lock; which
    callback it is follows from the model's dentry, not from the caller's locks."""
    m, _store = _autofs(
        mount_backend, "--variant", "1864f7bd", "-o", "inject=autofs4_notify_daemon=delay:3"
    )
    mp = m.mountpoint
    os.stat(mp / "proj")  # ->lookup: the mount request is posted, the daemon callback held
    proj = m.control({"op": "state"})["daemon"]["autofs"]["dentries"]["proj"]
    assert proj["dentry"]["hashed"] is False and "DCACHE_AUTOFS_PENDING" in proj["flags"]
    t0 = time.monotonic()
    with pytest.raises(FileExistsError):
        os.mkdir(mp / "proj")  # the kernel revalidates its dentry under filename_create's lock
    assert time.monotonic() - t0 < 2.0  # answered at once, the daemon's mkdir not waited for
    stats = m.control({"op": "state"})["daemon"]["stats"]
    assert stats.get("autofs4_lookup") == 2 and "autofs4_revalidate" not in stats, stats
    assert (mp / "proj" / "README").read_text() == "the volume\n"  # then the walk mounts it
    st = m.control({"op": "state"})
    assert st["daemon"]["autofs"]["dentries"]["proj"]["dentry"]["hashed"] is True
    assert not [e for e in st["events"] if e["type"] == "wait_under_lock"]


def _traced_mount_delayed(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    """strace every thread of ``pid`` and delay the return of its mount(2) by ``seconds``: the
    bind mount is in place while the daemon's READY is held back (a real, widened window)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    usec = int(seconds * 1e6)
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=mount", "-e", f"inject=mount:delay_exit={usec}"]
        + ["-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 5.0
    while time.monotonic() < end:  # attached: the kernel names the tracer
        status = Path(f"/proc/{pid}/status").read_text()
        if "TracerPid:\t0\n" not in status:
            return tracer
        time.sleep(0.05)
    tracer.kill()
    tracer.wait()
    pytest.fail("strace did not attach to the automount daemon")


def test_second_creator_keeps_the_daemons_bind_mount(mount_backend, tmp_path):
    """A ``mkdir`` of the key after the daemon's ``mkdir`` and bind mount and before its READY
    is answered with the mount point directory the kernel's dentry names, not the trigger: a
    LOOKUP answered with another node id makes the kernel drop the dentry (``d_invalidate``),
    which detaches the mounts on it (verified on 6.18; the cause of autofs-create's natural
    wrong results, where ``mkdir -p`` then created out1 under the vanished mount)."""
    m, _store = _autofs(mount_backend, "--variant", "1864f7bd")
    mp = m.mountpoint
    tracer = _traced_mount_delayed(_daemon_pid(m), tmp_path / "automountd.strace", 3.0)
    try:
        os.stat(mp / "proj")  # ->lookup: the mount request; the daemon mkdirs and binds
        end = time.monotonic() + 2.5
        while str(mp / "proj") not in _submounts(mp) and time.monotonic() < end:
            time.sleep(0.05)
        assert str(mp / "proj") in _submounts(mp), "the daemon's bind mount did not appear"
        proj = m.control({"op": "state"})["daemon"]["autofs"]["dentries"]["proj"]
        assert "d_mountpoint" not in proj["flags"]  # the daemon's READY is held back
        with pytest.raises(FileExistsError):
            os.mkdir(mp / "proj")  # the second creator, under filename_create's lock
        assert str(mp / "proj") in _submounts(mp), "the kernel detached the daemon's mount"
    finally:
        tracer.terminate()
        tracer.wait()
    assert (mp / "proj" / "README").read_text() == "the volume\n"
    assert str(mp / "proj") in _submounts(mp)


def test_create_in_a_trigger_goes_into_the_mount(mount_backend):
    """A walk whose ``->lookup`` of the key is answered at once (under the parent's lock, with
    the trigger directory) is in the mounted map entry as far as autofs4 goes (its ``->lookup``
    waited with the mutex dropped): ``mkdir proj/out1`` as the first access waits for the mount
    in its LOOKUP of out1 and creates out1 in the map entry, never in the trigger."""
    m, store = _autofs(
        mount_backend, "--variant", "1864f7bd", "-o", "inject=autofs4_notify_daemon=delay:1.5"
    )
    mp = m.mountpoint
    os.mkdir(mp / "proj" / "out1")  # lookup_slow of proj: the trigger; then out1 in it
    assert (store / ".map" / "proj" / "out1").is_dir()
    assert not (store / ".autofs" / "proj" / "out1").exists()
    assert (mp / "proj" / "out1").is_dir()
