"""The write policy (sumlora/core/outputs.py), enumerated over every entry point of the repository.

Every module with a ``__main__`` block under sumlora/, stages/, benchmarks/ and scripts/ is found by
reading the files, so a command added later is in this test without anyone adding it. Each must build
its parser with sumlora.core.cli (``parser()``), and every output it declares is given the same hostile
targets: the repository root (plain, absolute, through a symlink), the directory above it, .git, .dvc,
git-tracked files and a directory holding them, another stage's output, each of the command's own
inputs, and a non-empty directory or existing file it did not write. Each must be refused with one
line, exit 1, and leave every file of the project byte-identical; all but the last also with --force.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from project import make_project, sh

from sumlora.core import cli

PACKAGES = ("sumlora", "stages", "benchmarks", "scripts")
WRITES_NOTHING = {"sumlora.params", "sumlora.doctor", "sumlora.serve"}  # read-only commands


def entry_points() -> list[str]:
    """Every module of the repository that runs as a command (has an ``if __name__ == "__main__":`` block)."""
    found = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text())
            if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
                found.append(f.relative_to(ROOT).with_suffix("").as_posix().replace("/", "."))
    return found


COMMANDS = entry_points()
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_command_is_found_and_every_stage_is_one_of_them():
    assert {"sumlora.get_data", "sumlora.summarize", "sumlora.merge", "stages.train", "scripts.gpu_check",
            "benchmarks.bench_generate"} <= set(COMMANDS)
    for name, stage in STAGES.items():
        assert re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1) in COMMANDS, name


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_declares_its_paths_through_the_policy(module):
    ap = importlib.import_module(module).parser()
    assert ap.get_default("_command") == module  # built by cli.parser, under its own name
    outputs = [s for s in ap.sumlora_paths if s.role == "output"]
    assert bool(outputs) != (module in WRITES_NOTHING), "a command that writes declares its outputs"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stages_declared_outputs_are_its_dvc_outputs(name):
    """The cmd arguments a stage's parser calls outputs are exactly the stage's outs in dvc.yaml (one checked by
    the other: a DVC output the parser took for an input could be overwritten by another command)."""
    stage = STAGES[name]
    module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
    ap = importlib.import_module(module).parser()
    positional = [s for s in ap.sumlora_paths if not s.flag.startswith("--")]
    words = stage["cmd"].split()
    args = [w for w in words[words.index(module) + 1:] if not w.startswith("--")][:len(positional)]
    declared = {a for s, a in zip(positional, args) if s.role == "output"}
    outs = set()
    for key in ("outs", "metrics"):
        outs |= {o if isinstance(o, str) else next(iter(o)) for o in stage.get(key, [])}
    untracked = {"models/checkpoints"}  # the train stage's resume cache: deliberately not a DVC output
    assert declared - untracked == outs, (declared, outs)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links as their target) with the hash of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    root = make_project(tmp_path_factory.mktemp("policy") / "repo", dialogsum_dir, tiny_llama_dir)
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine\n")
    (root / "foreign.txt").write_text("mine\n")
    (root / "link-to-root").symlink_to(root)
    (root / "link-to-params").symlink_to(root / "params.yaml")
    for kind in ("dirs", "files"):
        (root / "in" / kind).mkdir(parents=True)
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "hostile targets")
    return root


def hostile_targets(root: Path, own_outs: set[str]) -> list[str]:
    other_out = next(o for o in ("data/formatted", "models/adapter", "data/tokenized") if o not in own_outs)
    return [".", str(root), "..", "link-to-root", ".git", ".git/config", ".dvc", ".dvc/config", "params.yaml",
            "link-to-params", "data", "stages", other_out]


def argv_for(ap, root: Path, target_dest: str, target: str) -> tuple[list[str], list[str]]:
    """Arguments that give ``target`` to the output ``target_dest`` and an existing path (or a fresh one, for
    other outputs) to every other declared path; returns (argv, the inputs given)."""
    import argparse

    exclusive = {a.dest for g in ap._mutually_exclusive_groups for a in g._group_actions[1:]}
    specs = {s.dest: s for s in ap.sumlora_paths}
    argv, inputs = [], []
    for action in ap._actions:
        if action.dest in exclusive or action.help == argparse.SUPPRESS and action.dest not in specs:
            continue
        spec = specs.get(action.dest)
        if spec is None:
            if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
                value = action.choices[0] if action.choices else "1"
            else:
                continue
        elif spec.dest == target_dest:
            value = target
        elif spec.role == "input":
            dirs = "dir" in spec.dest or spec.dest in ("adapter", "base", "data", "source")
            value = "in/dirs" if dirs else "in/files"
            inputs.append(value)
        else:
            value = f"fresh/{spec.dest}"
        argv += ([action.option_strings[0]] if action.option_strings else []) + [str(value)]
    return argv, inputs


def run_in(root: Path, module: str, argv: list[str], capsys) -> tuple[int, str]:
    main = importlib.import_module(module).main
    cwd = Path.cwd()
    os.chdir(root)
    try:
        code = cli.call(main, argv)
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err


CASES = [(m, s.dest) for m in COMMANDS for s in importlib.import_module(m).parser().sumlora_paths
         if s.role == "output"]


@pytest.mark.parametrize("module, dest", CASES, ids=[f"{m}:{d}" for m, d in CASES])
def test_every_output_refuses_every_hostile_target(project, module, dest, capsys):
    ap = importlib.import_module(module).parser()
    spec = next(s for s in ap.sumlora_paths if s.dest == dest)
    stage = module.startswith("stages.")
    own = {o if isinstance(o, str) else next(iter(o)) for st in STAGES.values()
           if stage and f"-m {module} " in st["cmd"] + " " for k in ("outs", "metrics") for o in st.get(k, [])}
    before = snapshot(project)
    targets = hostile_targets(project, own)
    tried = 0
    for target in targets + ["foreign" if spec.kind == "dir" else "foreign.txt"] + ["INPUTS"]:
        for force in ([False, True] if not stage and target not in ("foreign", "foreign.txt") else [False]):
            argv, inputs = argv_for(ap, project, dest, target)
            for given in (inputs if target == "INPUTS" else [target]):
                if target == "INPUTS":
                    argv, _ = argv_for(ap, project, dest, given)
                code, err = run_in(project, module, argv + (["--force"] if force else []), capsys)
                lines = [line for line in err.splitlines() if line.strip()]
                assert code == 1 and len(lines) == 1 and "refusing to write there" in lines[0], (argv, force, err)
                tried += 1
    assert snapshot(project) == before
    assert tried >= len(targets) + 1


def test_a_write_the_policy_did_not_clear_is_a_bug_in_a_running_command(tmp_path):
    """The atomic writers refuse, inside a command, a path no declared output covers: a command that forgets
    to declare what it writes fails at once."""
    from sumlora.core import atomic, outputs

    ap = cli.parser("sumlora.example", "An example.")
    cli.output(ap, "--out")
    args = cli.parse(ap, ["--out", str(tmp_path / "declared.txt")])
    try:
        atomic.write_text(args.out, "ok\n")
        with pytest.raises(RuntimeError, match="written without being declared as an output"):
            atomic.write_text(tmp_path / "undeclared.txt", "no\n")
    finally:
        outputs.enforce(False)
    assert (tmp_path / "declared.txt").read_text() == "ok\n" and not (tmp_path / "undeclared.txt").exists()


def test_production_code_writes_only_through_the_atomic_writers():
    """No open(..., 'w'), write_text, write_bytes, mkdir or rmtree in sumlora/ and stages/ outside the writers
    themselves and the few places that manage their own directories (each named here, with why)."""
    allowed = {
        "sumlora/core/atomic.py": "the writers",
        "sumlora/core/outputs.py": "the marker, inside a directory the policy cleared",
        "sumlora/core/cli.py": "the stage logs under logs/",
        "sumlora/batch.py": "OUTPUT.partial, appended batch by batch beside the cleared OUTPUT",
        "sumlora/training/checkpoints.py": "the checkpoints directory, a declared output of the train stage",
        "stages/train.py": "removes the partial curves directory a killed run left",
        "sumlora/testing.py": "builds temporary projects for the tests and scripts/gpu_check.py (not a command)",
    }
    pattern = re.compile(r"open\([^)]*[\"'][wa]|(?<!atomic)\.write_(text|bytes)\(|\.mkdir\(|rmtree\(|\.unlink\(")
    offenders = []
    for pkg in ("sumlora", "stages"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if rel not in allowed and pattern.search(f.read_text()):
                offenders.append(rel)
    assert offenders == []


def test_get_data_reproductions_of_the_data_loss_fail_cleanly(project):
    """The reported cases, as the user typed them (a subprocess each): --out "$(pwd)", data and . each exit 1 with
    one line and change nothing; the default target is still written."""
    before = snapshot(project)
    for out in (str(project), "data", "."):
        proc = sh(project, sys.executable, "-m", "sumlora.get_data", "--source", "in/dirs", "--out", out, check=False)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "refusing to write there" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(project) == before


def test_temporary_outputs_are_git_ignored_and_cleaned(tmp_path):
    """A killed writer's temporary sibling is ignored by git, and the next write of the same path removes it."""
    from sumlora.core import atomic

    sh(tmp_path, "git", "init", "-q")
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "data").mkdir()
    stale = [tmp_path / "data" / f".out.jsonl.{pid}.abc.tmp", tmp_path / "models" / f".release.{pid}.xyz.tmp"]
    stale[1].mkdir(parents=True)
    (stale[1] / "adapter_model.safetensors").write_text("half")
    stale[0].write_text("half a dialogue")
    (tmp_path / "data" / "out.jsonl.partial").write_text("{}\n")
    status = sh(tmp_path, "git", "status", "--porcelain", "--untracked-files=all").stdout
    assert status.strip() == "?? .gitignore", status
    atomic.write_text(tmp_path / "data" / "out.jsonl", "x\n")
    with atomic.output_dir(tmp_path / "models" / "release") as d:
        (d / "f").write_text("new")
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_every_json_output_is_strict(tmp_path, value):
    """Reported: metrics/train.json held a bare NaN (not JSON). Every JSON the writers produce is strict: a
    non-finite number is an error naming the file, and nothing is written."""
    import json

    from sumlora.core import atomic

    for write in (atomic.write_json, lambda p, o: atomic.write_jsonl(p, [o])):
        with pytest.raises(ValueError, match=r"m.json: refusing to write a non-finite number"):
            write(tmp_path / "m.json", {"eval_loss": value, "steps": 3})
    assert list(tmp_path.iterdir()) == []
    atomic.write_json(tmp_path / "m.json", {"eval_loss": 1.5})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {"eval_loss": 1.5}
