"""The GFS2 personality's glock states: direct I/O holds DF (``gfs2_file_direct_write`` /
``gfs2_file_direct_read``), buffered writes EX, buffered reads and page-ins SH, and the DLM
modes and compatibility follow ``lock_dlm.c`` (DF is CW: compatible with DF, not with SH/EX)."""

from __future__ import annotations

import mmap
import os
import sys
import time

import pytest

from backends.gfs2 import IO_STATE
from backends.glock import bast_state, dlm_mode, lm_state, may_grant
from stackfs.kernel.dlm import compatible
from stackfs.repro import stacks
from stackfs.runtime import control, service


def test_states_modes_and_local_grants():
    """``make_mode``, ``gdlm_bast`` and ``may_grant`` as fs/gfs2 has them."""
    assert [dlm_mode(s) for s in (None, "SH", "DF", "EX")] == ["NL", "PR", "CW", "EX"]
    assert [lm_state(m) for m in ("NL", "PR", "CW", "EX")] == [None, "SH", "DF", "EX"]
    assert compatible(dlm_mode("DF"), dlm_mode("DF"))
    assert not compatible(dlm_mode("DF"), dlm_mode("SH"))
    assert not compatible(dlm_mode("DF"), dlm_mode("EX"))
    assert [bast_state(m) for m in ("EX", "CW", "PR")] == [None, "DF", "SH"]
    # (writes, direct) -> the state the syscall holds its target in
    assert IO_STATE == {
        (True, True): "DF",
        (False, True): "DF",
        (True, False): "EX",
        (False, False): "SH",
    }
    # cached EX covers SH and DF holders; a cached DF does not cover SH (a fault needs a
    # conversion); granted holders share only their own state
    assert may_grant("EX", None, "DF") and may_grant("EX", None, "SH")
    assert not may_grant("DF", None, "SH") and not may_grant("SH", None, "DF")
    assert may_grant("DF", "DF", "DF") and may_grant("SH", "SH", "SH")
    assert not may_grant("EX", "DF", "SH") and not may_grant("EX", "EX", "EX")


def _glock(mnt, name: str) -> dict:
    state = control.query(str(mnt), {"op": "state"})
    [gl] = [lk for lk in state["locks"] if lk.get("name") == "glock" and lk["desc"] == f"/{name}"]
    return gl


@pytest.mark.mount
@pytest.mark.timeout(60)
def test_direct_writes_of_one_file_on_two_nodes_share_it_deferred(stack, tmp_path):
    """Two nodes write one file with O_DIRECT: each holds the glock DF, which the other's DF
    does not demote (before: EX, and the second node's write demoted the first's glock)."""
    svc = service.start([sys.executable, "-m", "backends.dlmd"], "dlm")
    try:
        store = tmp_path / "store"
        store.mkdir()
        (store / "A").write_bytes(b"a" * (2 << 20))
        mnts = []
        for node in ("node1", "node2"):
            mp = tmp_path / node
            mp.mkdir()
            opts = [f"dlm={svc.run_dir / 'dlm.sock'}", "lockspace=fs", f"node={node}"]
            stack.mount(stacks.backend_argv("gfs2", store, mp, options=opts), mp)
            mnts.append(mp)
        buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
        buf.write(b"x" * (1 << 20))
        for i, mp in enumerate(mnts):
            fd = os.open(mp / "A", os.O_WRONLY | os.O_DIRECT)
            try:
                assert os.pwrite(fd, buf, i << 20) == 1 << 20
            finally:
                os.close(fd)
        buf.close()
        deadline = time.monotonic() + 5
        while True:
            gls = [_glock(mp, "A") for mp in mnts]
            if all(gl["state"] == "DF" for gl in gls) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [gl["state"] for gl in gls] == ["DF", "DF"], gls
        assert [gl["demotes"] for gl in gls] == [0, 0], gls
        res = svc.control({"op": "state"})["dlm"]["resources"]
        [a] = [r for r in res if r["name"] == gls[0]["key"].split(":", 1)[1]]
        assert sorted((g["node"], g["mode"]) for g in a["granted"]) == [
            ("node1", "CW"),
            ("node2", "CW"),
        ]
    finally:
        stack.close()
        svc.stop()
