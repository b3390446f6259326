"""A temporary git + DVC copy of the project, with a tiny model and a few DialogSum rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sumlora.testing import copy_project

ROOT = Path(__file__).resolve().parents[1]


NONET = Path(__file__).resolve().parent / "nonet"
NONET_LOG = Path(tempfile.gettempdir()) / f"sumlora-nonet-{os.getpid()}.log"


def network_attempts() -> list[str]:
    """Connections that commands run through ``sh``/``dvc`` tried to open (and were refused)."""
    return NONET_LOG.read_text().splitlines() if NONET_LOG.is_file() else []


def env() -> dict:
    """Environment of every command a test runs in a project: offline, and network connections refused
    (tests/nonet/sitecustomize.py logs each attempt to $NONET_LOG, which the project fixture checks)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"  # `python` in dvc.yaml = this one
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NONET), e.get("PYTHONPATH")]))
    e["NONET_LOG"] = str(NONET_LOG)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1",
             GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="t@example.com",
             GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="t@example.com")
    return e


def sh(cwd: Path, *cmd: str, check: bool = True, extra_env: dict | None = None,
       stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                          input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check, extra_env=extra_env)


def write_rows(src: Path, dst: Path, counts: dict[str, int]) -> None:
    """Copy the first N rows of each split (test: N dialogues x their references)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        lines = (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (dst / f"{split}.jsonl").write_text("\n".join(lines[: n * (3 if split == "test" else 1)]) + "\n")


def tiny_params(model_dir: Path) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["model"]["name"] = str(model_dir)
    p["tokenize"]["max_length"] = 1024
    p["train"].update(max_steps=2, learning_rate=5.0e-2, eval_steps=1, save_steps=1, warmup_steps=0, logging_steps=1,
                      batch_size=2, gradient_accumulation_steps=1, max_eval_samples=2)
    p["generate"].update(num_dialogues=3, max_new_tokens=8, batch_size=2)
    # float32 everywhere: summaries that do not depend on the machine's bf16 or on how a batch was composed
    p["model"]["compute_dtype"] = "float32"
    p["generate"]["dequantize"] = "float32"
    # each tiny architecture's own LoRA targets: params.yaml names Llama's linear layers, the tiny Phi has others
    p["lora"]["target_modules"] = None
    # LoRA dropout on: training draws random numbers at every step, which resuming and evaluating must not disturb
    p["lora"]["dropout"] = 0.05
    return p


def set_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    p = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = p
        for k in parents:
            node = node[k]
        node[leaf] = value
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def make_project(dest: Path, dialogsum_dir: Path, model_dir: Path, counts=None) -> Path:
    """Copy the project into ``dest`` with the tiny params and a few rows of data (in ``dest/source``), committed."""
    write_rows(dialogsum_dir, dest / "source", counts or {"train": 12, "validation": 6, "test": 4})
    return copy_project(dest, tiny_params(model_dir), "source", env())


ALWAYS_RUNS = {"model_source"}  # always_changed in dvc.yaml: re-hashes the model source at every repro


def ran_stages(repro_output: str) -> set[str]:
    """The stages a `dvc repro` ran, less the always-changed ones (those run every time; their output is the same
    unless the model source changed, so nothing after them reruns)."""
    return {line.split("'")[1] for line in repro_output.splitlines() if line.startswith("Running stage")} - ALWAYS_RUNS


def status(project: Path, *args: str) -> dict:
    """`dvc status --json` less the always-changed stages' "always changed" (what is really out of date)."""
    out = json.loads(dvc(project, "status", "--json", *args).stdout or "{}")
    return {k: v for k, v in out.items() if not (k in ALWAYS_RUNS and v == ["always changed"])}


def read_json(path: Path):
    return json.loads(path.read_text())


# The default template written out by hand (not rendered by sumlora.prompt), to check the real paths against.
LITERAL_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                  "the request.\n\n### Instruct: Summarize the below conversation.\n\n{dialogue}\n\n### Output:\n")


def check_training_rows_match_generation_prompts(tokenized: Path, formatted: Path, adapter_dir: Path,
                                                 base_dir: Path, n: int = 20) -> int:
    """Rows the tokenize stage wrote vs the prompts the generate stage builds from the template saved
    beside the adapter, token for token; returns the number of rows checked."""
    from sumlora.generation import summary_prompts
    from sumlora.modeling import load_tokenizer
    from sumlora.prompt import PromptTemplate

    tok = load_tokenizer(base_dir)  # what the generate stage loads
    by_id = {r["id"]: r for r in map(json.loads, formatted.read_text(encoding="utf-8").splitlines())}
    rows = [json.loads(x) for x in tokenized.read_text(encoding="utf-8").splitlines()][:n]
    prompts = summary_prompts(tok, PromptTemplate.load(adapter_dir), [by_id[r["id"]]["dialogue"] for r in rows])
    for row, prompt in zip(rows, prompts):
        src = by_id[row["id"]]
        first = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert row["input_ids"][:first] == prompt, row["id"]  # trained on exactly what generation feeds
        assert tok.decode(prompt, skip_special_tokens=True) == LITERAL_PROMPT.format(dialogue=src["dialogue"].strip())
        assert row["labels"][first:] == row["input_ids"][first:]  # every token after the prompt is learned
        assert tok.decode(row["input_ids"][first:]) == f"{src['summary'].strip()}\n### End{tok.eos_token}"
    return len(rows)
