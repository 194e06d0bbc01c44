"""Paths are bytes: a report that involves a path that is not UTF-8 is written completely,
with the path escaped (stackfs/watchdog/escape.py), and the watcher goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stackfs.runtime.service import timeout_factor
from stackfs.watchdog import escape

pytestmark = [pytest.mark.mount, pytest.mark.timeout(40)]


def test_escape_rules():
    assert escape.path_text(b"/m/d\xff\xfe/f") == "/m/d\\377\\376/f"
    assert escape.path_text(os.fsdecode(b"a\nb\\c")) == "a\\012b\\134c"
    assert escape.path_text("/m/caf\u00e9") == "/m/caf\u00e9"
    assert escape.printable(os.fsdecode(b"x \xff\n")) == "x \\377\n"
    assert escape.printable_json({"p": [os.fsdecode(b"\xfe")], 1: "\ud800"}) == {
        "p": ["\\376"],
        1: "\\ud800",
    }


def test_watch_writes_a_report_with_a_non_utf8_path(
    testfs, workload, tmp_path, nothing_left, picture_ok
):
    """A LOOKUP under a directory named b'\\xff\\xfe' never answered: report.txt, report.json
    and stdout are complete, the path written as \\377\\376."""
    m = testfs("hang")
    os.mkdir(os.fsencode(m.mountpoint) + b"/\xff\xfe")
    target = os.fsencode(m.mountpoint) + b"/\xff\xfe/hang-\xfe"
    out = tmp_path / "rep"
    w = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stackfs",
            "watch",
            str(m.mountpoint),
            "--threshold",
            "0.5",
            "--abort",
            "--report-dir",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
            "--timeout",
            "20",
            "--kmsg",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert b"watching 1 FUSE mount" in w.stderr.readline()
        stat = workload([b"stat", target])
        stdout, stderr = w.communicate(timeout=25 * timeout_factor())
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 1, stderr
    assert b"Traceback" not in stderr and b"UnicodeEncodeError" not in stderr, stderr
    shown = f"{m.mountpoint}/\\377\\376/hang-\\376".encode()
    assert shown in stdout, stdout
    text = (out / "report.txt").read_bytes()
    assert f"task stat:{stat.pid} blocked in an interruptible FUSE wait".encode() in text
    assert shown in text and b"recovery: complete" in text
    text.decode()  # UTF-8 throughout
    for path in (out / "report.json", tmp_path / "r.json"):
        data = json.loads(path.read_text())
        picture_ok(data["files"])  # the DOT file (labels with the path) rendered too
        assert data["verdict"] == "hang" and data["recovery"]["ok"]
        assert shown.decode() in data["text"]
        [hang] = data["hangs"]
        assert shown.decode() in hang["task"]["syscall"]["paths"]
        assert hang["request"]["name"] == "hang-\\376"
    assert stat.wait(timeout=5) != 0
    nothing_left(m, [stat.pid])


def test_mount_table_with_a_non_utf8_mount_point(tmp_path):
    """A mount point that is not UTF-8 (in a private mount namespace, so that no other process
    of the machine sees it) does not break reading the mount table."""
    mp = os.fsencode(tmp_path) + b"/m\xff"
    os.mkdir(mp)
    code = (
        "import os, sys; from stackfs.runtime import mountinfo; "
        "from stackfs.watchdog.escape import path_text; "
        "[e] = [e for e in mountinfo.mounts() if os.fsencode(e.mountpoint) == sys.argv[1]"
        ".encode('utf-8', 'surrogateescape')]; print(path_text(e.mountpoint))"
    )
    res = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs none "$1" && exec "$2" -c "$3" "$1"',
            "sh",
            mp,
            sys.executable,
            code,
        ],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == f"{tmp_path}/m\\377"
