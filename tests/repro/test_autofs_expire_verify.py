"""autofs-expire's check that the key mounts again reads only after the expire completed.

The scenario's expire action returns when the daemon removed the mount point, with the
expire's completion still pending; a read then joins the expire's queue, and in 2.6.18 gets
the seed's ENOENT itself (the 1-in-40 natural wrong result: the check's own ``cat`` hit the
bug). In-process: the backend's state is a fake that reports the expire pending twice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from stackfs.repro import evidence
from stackfs.repro.scenarios.autofs_expire import KEY, AutofsExpire
from stackfs.runtime import control


def test_the_check_reads_after_the_expire_completed(monkeypatch, tmp_path: Path) -> None:
    pending = [{"token": 2, "name": KEY, "type": "expire"}]
    answers = [pending, pending, []]
    seen: list[list[dict]] = []

    def query(mnt, request, timeout=None):
        queues = answers.pop(0) if answers else []
        seen.append(queues)
        return {"daemon": {"autofs": {"wait_queues": queues}}, "events": []}

    reads: list[list[list[dict]]] = []

    def content(where, path, expected):
        reads.append(list(seen))
        return []

    monkeypatch.setattr(control, "query", query)
    monkeypatch.setattr(evidence, "content", content)
    run = SimpleNamespace(layer=lambda role: SimpleNamespace(mnt=tmp_path), note=lambda text: None)
    assert AutofsExpire().verify(run, []) == []  # type: ignore[arg-type]
    assert len(reads) == 1
    assert reads[0] and reads[0][-1] == [], "read while the expire was still pending"
