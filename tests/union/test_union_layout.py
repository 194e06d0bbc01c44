"""The union's modules import each other in one direction only: the FUSE operations
(``fs.py``) and the copy-up (``copy_up.py``) both receive the mount's state (``sbinfo.py``) and
never import each other, as overlayfs' ``copy_up.c`` reaches the rest only through
``overlayfs.h``. Read from the sources (imports under ``TYPE_CHECKING`` count too); nothing is
mounted."""

from __future__ import annotations

import ast
from pathlib import Path

import stackfs.union

UNION = Path(stackfs.union.__file__).resolve().parent
PKG = "stackfs.union"


def _union_imports(path: Path) -> set[str]:
    """The modules of ``stackfs.union`` that ``path`` imports (by module name, no package)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == PKG:
                names = [f"{PKG}.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        out.update(n[len(PKG) + 1 :].split(".")[0] for n in names if n.startswith(PKG + "."))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in UNION.glob("*.py") if p.stem != "__init__"}
    return {m: _union_imports(p) & mods.keys() for m, p in mods.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_no_import_circle_in_the_union() -> None:
    graph = _graph()
    assert _circle(graph) is None, " -> ".join(_circle(graph) or [])


def test_fs_and_copy_up_share_the_mount_state_not_each_other() -> None:
    graph = _graph()
    assert "fs" not in graph["copy_up"]
    assert "sbinfo" in graph["copy_up"] and "sbinfo" in graph["fs"]
    assert not graph["sbinfo"] & {"fs", "copy_up"}
