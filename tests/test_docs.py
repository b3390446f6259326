"""The docs a newcomer reads: short README, links that resolve, generated blocks that are current, the Quick
start commands that CI runs, and no history or machine-specific narrative."""

import re
import subprocess

import pytest
from conftest import ROOT

from sumlora import docgen

DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked() -> set[str]:
    return set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split())


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_in_a_fresh_clone(doc):
    """Relative links name git-tracked files (what a fresh clone has) and, with #anchor, one of their headings."""
    files = tracked()
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        rel = dest.relative_to(ROOT).as_posix()
        assert rel in files or any(f.startswith(rel + "/") for f in files), f"{doc.name}: {target} is not in git"
        if anchor:
            assert anchor in anchors(dest), f"{doc.name}: {target}: no such heading in {rel}"


def test_the_generated_blocks_are_what_the_committed_files_give():
    makers = docgen.blocks(ROOT / "metrics", ROOT / "plots/training/timing.json")
    for doc in (ROOT / "README.md", ROOT / "docs/pipeline.md"):
        text = doc.read_text()
        assert "<!-- generated:" in text, doc
        assert docgen.fill(text, doc.name, makers) == text, f"{doc.name} is stale: python -m sumlora.docgen --write"


def test_the_quick_start_has_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    setup, run = commands
    assert setup.startswith("bash scripts/setup_env.sh && ") and setup.endswith("dvc repro")
    assert run == "bash scripts/setup_env.sh --test && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci/run").read_text()
    assert "bash scripts/setup_env.sh --test" in ci and ".venv/bin/python -m pytest" in ci


NARRATIVE = [r"\bthis round\b", r"\bround \d", r"\bearlier round", r"\bsession\b", r"\bCI (?:passed|took|time)",
             r"\b\d+ (?:tests|passed)\b", r"/work/", r"/home/\w", r"127\.0\.0\.1:(?!8000\b)\d{4,}", r"\bissue \d+"]


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name != "BENCHMARKS.md"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_describe_the_project_not_its_history(doc):
    text = doc.read_text()
    for pattern in NARRATIVE:
        assert not re.search(pattern, text, re.I), f"{doc.name}: {re.search(pattern, text, re.I).group(0)!r}"


def test_nothing_outside_tests_imports_from_tests():
    """Tests, benchmarks and scripts share support code through sumlora/testing.py, never through tests/."""
    offenders = []
    for pkg in ("sumlora", "stages", "benchmarks", "scripts"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            text = f.read_text()
            if re.search(r"^\s*(from|import) (tests|conftest|project|servers)(\.\w+)*( import |\s*$)|"
                         r"sys\.path\.\w+\([^)]*tests", text, re.M):
                offenders.append(f.relative_to(ROOT).as_posix())
    assert offenders == []
