"""requirements.txt pins every third-party package the code imports; requirements.lock (the tested environment)
agrees with it and with what is installed here."""

import ast
import re
import sys
from importlib import metadata

from conftest import ROOT

CODE = ("sumlora", "stages", "benchmarks", "tests")


def normalized(name: str) -> str:
    """A distribution name as PEP 503 normalizes it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (extras dropped), names normalized (PEP 503)."""
    found = {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[\w,\-]+\])?==(\S+)", line.strip()):  # name[extras]==version
            found[normalized(m[1])] = m[3]
    return found


def imported_top_level_modules() -> set[str]:
    mods = set()
    for d in CODE:
        for f in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    mods.add(node.module.split(".")[0])
    ours = {"sumlora", "stages", "benchmarks", "conftest", "project", "imports", "servers", "nonet"}
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ours}


def test_every_imported_package_is_pinned_in_requirements_txt():
    dists = metadata.packages_distributions()  # import name -> the distributions that provide it
    required = pins(ROOT / "requirements.txt")
    missing = {}
    for mod in sorted(imported_top_level_modules()):
        assert mod in dists, f"{mod} is imported but no installed distribution provides it"
        names = {normalized(d) for d in dists[mod]}
        if not names & set(required):
            missing[mod] = sorted(names)
    assert not missing, f"imported but not pinned in requirements.txt: {missing}"


def test_the_lock_agrees_with_requirements_txt_and_with_this_environment():
    required, locked = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements.lock")
    assert {k: v for k, v in required.items() if locked.get(k) != v} == {}
    # the first distribution of each name on sys.path: what an import and metadata.version() find. A later one
    # may be a vendored copy (compiling with torch.compile puts setuptools/_vendor on sys.path) and must not
    # stand in for it
    installed = {}
    for d in metadata.distributions():
        installed.setdefault(normalized(d.metadata["Name"]), d.version.split("+")[0])
    assert {k: (v, installed.get(k)) for k, v in locked.items() if installed.get(k) != v} == {}
