"""Which sumlora modules a stage script imports, transitively (static, from the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _direct(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in mods if m.split(".")[0] == "sumlora" and (ROOT / (m.replace(".", "/") + ".py")).is_file()}


def sumlora_files(script: str) -> set[str]:
    """Repo-relative paths of every sumlora module ``script`` imports, plus sumlora/__init__.py."""
    seen, todo = set(), list(_direct(ROOT / script))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_direct(ROOT / (mod.replace(".", "/") + ".py")))
    files = {mod.replace(".", "/") + ".py" for mod in seen}
    return files | ({"sumlora/__init__.py"} if files else set())
