"""dvc.yaml declares exactly the library modules each stage imports (a directory: every .py file in it)."""

import re

import pytest
import yaml
from conftest import ROOT
from imports import expand, sumlora_files

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_modules_it_imports(name):
    stage = STAGES[name]
    script = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1).replace(".", "/") + ".py"
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]}
    assert script in deps
    assert expand(sorted(deps)) == sumlora_files(script)


def test_every_stage_output_is_declared_once():
    outs = []
    for stage in STAGES.values():
        for kind in ("outs", "metrics"):
            outs += [o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])]
    assert len(outs) == len(set(outs))


def test_training_fingerprint_covers_the_code_dvc_tracks_for_train():
    """The run fingerprint hashes the project code loaded at that point: the train stage's code deps."""
    import subprocess
    import sys

    code = ("import stages.train, sumlora.training.run, sumlora.training.curves, sumlora.modeling\n"
            "from sumlora.training.checkpoints import code_files\n"
            f"print('\\n'.join(str(p.relative_to({str(ROOT)!r})) for p in code_files()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    hashed = set(out.stdout.split()) - {"stages/__init__.py"}
    declared = expand(STAGES["train"]["deps"]) | {d for d in STAGES["train"]["deps"] if d.startswith("stages/")}
    assert hashed == declared
