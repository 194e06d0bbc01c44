"""The wait-for graph as a picture: ``waitgraph.dot`` (the source, always) and, when graphviz
``dot`` is installed, ``waitgraph.svg`` and ``waitgraph.png``.

Laid out so that a deadlock reads as one: top to bottom (``rankdir=TB``), the cycle's nodes
first and chained by its edges, so the cycle is a column whose last edge climbs back to the
top; the tasks that only wait on the cycle (the workload's ``mv``) and the daemons hang off
it without pushing it apart (``constraint=false`` for context edges). Long labels (paths,
syscalls, lock descriptions) are wrapped at :data:`WRAP` characters so that no node is wider
than a few inches, and the PNG is drawn at 96 dpi no wider than :data:`MAX_WIDTH_IN` inches
(1,200 pixels): readable at normal size, in a mail client or a bug tracker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from stackfs.watchdog.escape import printable
from stackfs.watchdog.graph import Cycle, WaitGraph

#: characters per label line
WRAP = 34
#: characters per edge-label line
EDGE_WRAP = 26
DPI = 96
#: 1,200 px at 96 dpi
MAX_WIDTH_IN = 12.5

_SHAPES = {
    "task": "box",
    "request": "ellipse",
    "conn": "hexagon",
    "daemon": "component",
    "lock": "octagon",
    "klock": "octagon",
    "inject": "diamond",
}


def wrap(text: str, width: int = WRAP) -> str:
    """Wrap each line of ``text`` at ``width``, preferring breaks after ``/``, ``,`` and
    spaces and before ``(``, so that a path wraps between its components."""
    out: list[str] = []
    for line in text.split("\n"):
        while len(line) > width:
            window = line[:width]
            # break after a space, "/" or ",", or before "("
            cut = max(
                window.rfind(" ") + 1,
                window.rfind("/") + 1,
                window.rfind(",") + 1,
                window.rfind("("),
            )
            if cut < width // 3:
                cut = width
            head, line = line[:cut].rstrip(), line[cut:].lstrip()
            out.append(head)
        out.append(line)
    return "\n".join(out)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(
    g: WaitGraph | None,
    cycle: Cycle | None,
    hung: set[int] | None = None,
    title: str = "",
    events: list[dict[str, Any]] | None = None,
) -> str:
    """The graph in graphviz form: the cycle in red, hung tasks in orange, inferred edges
    dashed, context edges (request -> its daemon) dotted; then the modelled oopses
    (``events``, their JSON form): who hit the BUG_ON, on which object, racing with whom."""
    g = g if g is not None else WaitGraph()
    hung = hung or set()
    in_cycle = list(cycle.nodes) if cycle else []
    cycle_edges = {(e.src, e.dst) for e in cycle.edges} if cycle else set()
    head = "stackfs watchdog: " + ("wait-for graph" if g.nodes else "modelled oops")
    if title or cycle:
        head += f" - {title or (cycle.title if cycle else '')}"
    lines = [
        "digraph waitfor {",
        f'  graph [rankdir=TB, dpi={DPI}, size="{MAX_WIDTH_IN:g},40", nodesep=0.35, '
        f'ranksep=0.45, labelloc=t, fontname="monospace", fontsize=12, '
        f"label={_q(wrap(head.replace(chr(34), chr(39)), 90))}];",
        '  node [fontname="monospace", fontsize=10, margin="0.12,0.06"];',
        '  edge [fontname="monospace", fontsize=9];',
    ]
    order = in_cycle + [nid for nid in g.nodes if nid not in in_cycle]
    for nid in order:
        n = g.nodes[nid]
        attrs = [f"label={_q(wrap(n.label))}", f"shape={_SHAPES.get(n.kind, 'box')}"]
        style = ["rounded"] if n.kind == "task" else []
        if n.kind == "klock":
            style.append("dashed")
        if n.id in in_cycle:
            style.append("filled")
            attrs += ['fillcolor="#ffd0d0"', 'color="#c00000"', "penwidth=2"]
        elif n.kind == "task" and n.attrs.tid in hung:
            style.append("filled")
            attrs.append('fillcolor="#ffe0b0"')
        elif n.kind == "task" and n.attrs.state == "D":
            style.append("filled")
            attrs.append('fillcolor="#fff0c0"')
        if style:
            attrs.append(f'style="{",".join(style)}"')
        lines.append(f"  {_q(n.id)} [{', '.join(attrs)}];")
    # the cycle's edges first, in cycle order: dot ranks them as a column, top to bottom
    edges = sorted(
        g.edges, key=lambda e: (0, cycle.edges.index(e)) if cycle and e in cycle.edges else (1, 0)
    )
    for e in edges:
        attrs = [f"label={_q(wrap(e.label, EDGE_WRAP))}"]
        if (e.src, e.dst) in cycle_edges:
            attrs += ['color="#c00000"', "penwidth=2", 'fontcolor="#c00000"']
        if e.inferred:
            attrs.append("style=dashed")
        if e.kind == "context":
            attrs += ["style=dotted", 'color="#808080"', 'fontcolor="#808080"', "constraint=false"]
        lines.append(f"  {_q(e.src)} -> {_q(e.dst)} [{', '.join(attrs)}];")
    lines += _oops_dot(events or [], {nid for nid in g.nodes if nid.startswith("task:")})
    lines.append("}")
    return "\n".join(lines) + "\n"


def _oops_dot(events: list[dict[str, Any]], have: set[str]) -> list[str]:
    """A modelled oops: the task that hit the assertion -> the BUG -> the object it was about,
    and every other task caught in the race on that object, with its innermost frames."""
    lines: list[str] = []
    seen = set(have)
    # the first oops on each object is drawn; the ones that followed it are counted
    first: dict[str, dict[str, Any]] = {}
    again: dict[str, int] = {}
    for ev in events:
        if ev.get("type") != "oops":
            continue
        obj = (ev.get("detail") or {}).get("dentry")
        key = f"{ev.get('daemon')}:{obj.get('id')}" if isinstance(obj, dict) else str(id(ev))
        first.setdefault(key, ev)
        again[key] = again.get(key, -1) + 1
    for i, (key, ev) in enumerate(first.items()):
        d = ev.get("detail") or {}
        tasks = ev.get("tasks") or []
        oid = f"oops:{i}"
        bug = str(d.get("bug") or ev.get("summary", "BUG"))
        n = again[key]
        more = f"then {n} more oops{'es' if n > 1 else ''} on it" if n else ""
        fs = f"(model, {ev.get('fsname', '?')})"
        label = "\n".join(x for x in (bug, str(d.get("assertion") or ""), more, fs) if x)
        lines.append(
            f"  {_q(oid)} [label={_q(wrap(label))}, shape=doubleoctagon, "
            'style=filled, fillcolor="#ffd0d0", color="#c00000"];'
        )
        obj = d.get("dentry")
        obj_id = None
        if isinstance(obj, dict):
            obj_id = f"dentry:{ev.get('daemon')}:{obj.get('id')}"
            if obj_id not in seen:
                seen.add(obj_id)
                state = ", ".join(k for k in ("hashed", "in_lookup") if obj.get(k))
                olabel = (
                    f"dentry '{obj.get('name')}'\nparent ino {obj.get('parent')}\n"
                    f"{state or 'unhashed'}, refs {obj.get('refs')}"
                )
                lines.append(f"  {_q(obj_id)} [label={_q(wrap(olabel))}, shape=note];")
            lines.append(f'  {_q(oid)} -> {_q(obj_id)} [label="on", color="#c00000"];')
        for j, t in enumerate(tasks):
            tid = f"task:{t.get('pid')}"
            chain = list(reversed(t.get("chain") or []))
            if tid not in seen:
                seen.add(tid)
                tlabel = f"{t.get('comm')}/{t.get('pid')}\n" + " <- ".join(chain[:3])
                lines.append(
                    f"  {_q(tid)} [label={_q(wrap(tlabel))}, shape=box, "
                    'style="rounded,filled", fillcolor="#ffe0b0"];'
                )
            where = chain[0] if chain else "?"
            if j == 0:
                elabel = _q(wrap(f"BUG_ON in {where}", EDGE_WRAP))
                lines.append(
                    f"  {_q(tid)} -> {_q(oid)} [label={elabel}, "
                    'color="#c00000", penwidth=2, fontcolor="#c00000"];'
                )
            elif obj_id is not None:
                elabel = _q(wrap(f"racing, in {where}", EDGE_WRAP))
                lines.append(f"  {_q(tid)} -> {_q(obj_id)} [label={elabel}, style=dashed];")
    return lines


def write_picture(
    g: WaitGraph | None,
    cycle: Cycle | None,
    d: Path,
    notes: list[str],
    hung: set[int] | None = None,
    title: str = "",
    events: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """``waitgraph.dot`` always; ``.svg`` and ``.png`` when graphviz ``dot`` is installed."""
    files = {}
    dot_file = d / "waitgraph.dot"
    dot_file.write_text(printable(to_dot(g, cycle, hung, title, events)))
    files["dot"] = str(dot_file)
    dot = shutil.which("dot")
    if dot is None:
        notes.append(
            "graphviz 'dot' is not installed: no SVG/PNG picture "
            "(apt-get install graphviz); waitgraph.dot is there"
        )
        return files
    for fmt in ("svg", "png"):
        out = d / f"waitgraph.{fmt}"
        try:
            res = subprocess.run(
                [dot, f"-T{fmt}", "-o", str(out), str(dot_file)], capture_output=True, timeout=20
            )
        except subprocess.TimeoutExpired:
            notes.append(f"dot -T{fmt} timed out")
            continue
        if res.returncode == 0 and out.exists():
            files[fmt] = str(out)
        else:
            notes.append(f"dot -T{fmt} failed: {res.stderr.decode(errors='replace').strip()}")
    return files


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG, from its IHDR chunk."""
    data = Path(path).read_bytes()[:24]
    if not re.match(rb"\x89PNG\r\n\x1a\n", data):
        raise ValueError(f"{path}: not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
