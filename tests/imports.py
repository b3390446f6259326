"""Which sumlora files a stage script imports, transitively (static, from the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _file(mod: str) -> Path | None:
    """The file of module ``mod`` (a module or a package's __init__), None if it is not one of ours."""
    base = ROOT / mod.replace(".", "/")
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _direct(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    found = set()
    for m in mods:
        if m.split(".")[0] != "sumlora":
            continue
        parts = m.split(".")
        found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))  # importing a.b.c runs a, a.b too
    return {m for m in found if _file(m)}


def sumlora_files(script: str) -> set[str]:
    """Repo-relative paths of every sumlora file ``script`` imports, packages' __init__.py included."""
    seen, todo = set(), list(_direct(ROOT / script))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_direct(_file(mod)))
    return {_file(m).relative_to(ROOT).as_posix() for m in seen}


def expand(deps: list[str]) -> set[str]:
    """dvc.yaml deps under sumlora/ as files: a directory stands for every .py file in it."""
    files = set()
    for d in deps:
        if d.startswith("sumlora/") or d == "sumlora":
            p = ROOT / d
            files.update(f.relative_to(ROOT).as_posix() for f in p.rglob("*.py")) if p.is_dir() else files.add(d)
    return files
