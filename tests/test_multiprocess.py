"""Data-parallel training under `accelerate launch` with 2 CPU processes (gloo)."""

import csv
import json

import pytest
import torch
from project import dvc, make_project, set_params, sh

pytestmark = pytest.mark.slow

LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
LOOPBACK = {"NONET_ALLOW_LOOPBACK": "1"}  # gloo's rendezvous is on loopback
TRAIN = ["-m", "stages.train", "data/tokenized", "models/base", "models/adapter", "models/checkpoints",
         "plots/training", "metrics/train.json"]


def test_train_stage_under_accelerate_launch_two_processes(tmp_path, dialogsum_dir, tiny_llama_dir):
    proj = make_project(tmp_path / "p", dialogsum_dir, tiny_llama_dir)
    # 2 steps x 2 rows x 2 processes = 8 of the 12 training rows: less than one epoch, so no row repeats
    # no LoRA dropout, every step logged: for the comparison with one process below
    set_params(proj, {"train.max_steps": 2, "train.batch_size": 2, "train.gradient_accumulation_steps": 1,
                      "train.eval_steps": 1, "train.save_steps": 1, "train.logging_steps": 1, "lora.dropout": 0.0})
    dvc(proj, "repro", "tokenize")
    out = sh(proj, *LAUNCH, *TRAIN, extra_env=LOOPBACK)
    log = out.stdout + out.stderr
    assert "on 2 processes (gloo)" in log, log[-3000:]

    timing = json.loads((proj / "plots/training/timing.json").read_text())
    assert timing["processes"] == 2
    assert timing["rows_per_process"] == [4, 4]  # each process trained on its own share...
    assert timing["rows_seen_by_several_processes"] == 0  # ...and no row went to both
    # what it ran on (python -m sumlora.doctor --json), and the dtype model.compute_dtype: auto resolved to
    assert timing["environment"]["packages"]["torch"] == torch.__version__ and timing["compute_dtype"] == "float32"
    metrics = json.loads((proj / "metrics/train.json").read_text())
    assert metrics["steps"] == 2

    assert log.count("adapter saved to models/adapter") == 1  # written once, by the main process
    adapter = {p.name for p in (proj / "models/adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "prompt_template.json"} <= adapter
    assert sorted(p.name for p in (proj / "models").iterdir() if p.name != ".gitignore") == [
        "adapter", "base", "checkpoints"]  # no temporary leftovers
    assert (proj / "models/checkpoints/checkpoint-2/.complete").is_file()

    # Each batch run as one-row passes (train.max_tokens_per_pass): each pass's loss is over the whole batch's label
    # count, and only a batch's last pass synchronizes (DDP averages the summed gradient once), so step 1's gradient
    # must be the whole batches' one.
    set_params(proj, {"train.max_tokens_per_pass": 1})
    sh(proj, *LAUNCH, "-m", "stages.train", "data/tokenized", "models/base", "split/adapter", "split/checkpoints",
       "split/training", "split/train.json", extra_env=LOOPBACK)
    set_params(proj, {"train.max_tokens_per_pass": None})

    # The loss scaling across processes: one process with 2 accumulated batches of 2 sees the same 4 rows at step 1
    # as 2 processes with a batch of 2 each (rank r takes batch r of each pair). Its gradient must be the same:
    # without the scaling by the process count, DDP's averaging would halve the 2-process gradient. (Only step 1:
    # from step 2 on, the 8-bit optimizer's rounding of the slightly different all-reduced sums can diverge.)
    # The validation loss must not depend on the process count either (it was scaled by it once).
    set_params(proj, {"train.gradient_accumulation_steps": 2})
    sh(proj, "python", "-m", "stages.train", "data/tokenized", "models/base", "one/adapter", "one/checkpoints",
       "one/training", "one/train.json")
    assert json.loads((proj / "one/train.json").read_text())["steps"] == 2
    two, one = (logged(proj / d / "plots/metrics") for d in ("plots/training", "one/training"))
    assert two["train/grad_norm"][1] == pytest.approx(one["train/grad_norm"][1], rel=1e-4), (two, one)
    assert two["train/loss"][1] == pytest.approx(one["train/loss"][1], rel=1e-4)
    assert two["eval/loss"][1] == pytest.approx(one["eval/loss"][1], rel=1e-4)
    split = logged(proj / "split/training/plots/metrics")
    assert split["train/grad_norm"][1] == pytest.approx(two["train/grad_norm"][1], rel=1e-4), (split, two)
    assert split["train/loss"][1] == pytest.approx(two["train/loss"][1], rel=1e-4)

    # generation split across the two processes writes what one process writes
    gen = ["-m", "stages.generate", "data/formatted/test.jsonl", "models/base"]
    sh(proj, "python", *gen, "one.jsonl", "one.json", "--adapter", "models/adapter")
    out = sh(proj, *LAUNCH, *gen, "two.jsonl", "two.json", "--adapter", "models/adapter", extra_env=LOOPBACK)
    assert "(2 processes)" in out.stdout, out.stdout[-2000:]
    one, two = ([json.loads(x) for x in (proj / f).read_text().splitlines()] for f in ("one.jsonl", "two.jsonl"))
    assert len(one) == 3 and [r["id"] for r in two] == [r["id"] for r in one]
    assert [r["prediction"] for r in two] == [r["prediction"] for r in one]


def logged(metrics_dir) -> dict[str, dict[int, float]]:
    """The curves dvclive logged ("train/grad_norm" -> {step: value}; TSV files of step and value)."""
    curves = {}
    for tsv in metrics_dir.rglob("*.tsv"):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        curves[f"{tsv.parent.name}/{tsv.stem}"] = {int(r["step"]): float(r[tsv.stem]) for r in rows}
    return curves
