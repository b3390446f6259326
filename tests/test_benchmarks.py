"""The benchmark scripts run end to end on tiny models (CPU) and report what they claim to."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmarks.bench_train import ARMS
from sumlora.core.device import resolve_compute_dtype

pytestmark = pytest.mark.slow


def bench(*argv, env=None):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_training_benchmark_runs_each_lever_alone_and_together_interleaved(tmp_path, tiny_llama_dir, dialogsum_dir):
    out = bench("-m", "benchmarks.bench_train", "--base", str(tiny_llama_dir), "--data", str(dialogsum_dir),
                "--steps", "2", "--eval-rows", "3", "--repeats", "1", "--json", str(tmp_path / "t.json"))
    r = json.loads((tmp_path / "t.json").read_text())
    arms = ["tutorial", "default", "+bf16", "+dequantized", "+eager", "+cheap dropout", "+bf16+dequantized",
            "+bf16+dequantized+cheap dropout", "+bf16+dequantized+cheap dropout+split passes",
            "+bf16+dequantized+no dropout+split passes", "+bf16+dequantized+no dropout+split passes+compiled blocks",
            "+bf16+dequantized+no dropout+split passes+matmul attention",
            "+bf16+dequantized+no dropout+split passes+matmul attention+compiled blocks"]
    assert [x["arm"] for x in r["runs"]] == arms
    run = {x["arm"]: x for x in r["runs"]}
    assert [a for a in arms if run[a]["max_tokens_per_pass"] is not None] == arms[-5:]
    # the tutorial's LoRA dropout in every arm but the last four, whatever params.yaml says
    assert [run[a]["lora_dropout"] for a in arms] == [0.05] * (len(arms) - 4) + [0.0] * 4
    # only the compiled arms compile their blocks, whatever params.yaml's train.compile_blocks says
    assert [a for a in arms if run[a]["compiled_blocks"]] == [arms[-3], arms[-1]]
    assert (run["tutorial"]["batch"], run["tutorial"]["checkpointing"]) == ("1 x 4", True)  # the tutorial's recipe
    assert (run["default"]["batch"], run["default"]["checkpointing"]) == ("2 x 2", False)  # params.yaml's
    settings = {a: (run[a]["compute_dtype"], run[a]["dequantized"], run[a]["attention"], run[a]["cheap_dropout"])
                for a in arms}
    assert settings == {"tutorial": ("float32", False, "sdpa", False), "default": ("float32", False, "sdpa", False),
                        "+bf16": ("bfloat16", False, "sdpa", False), "+dequantized": ("float32", True, "sdpa", False),
                        "+eager": ("float32", False, "eager", False),
                        "+cheap dropout": ("float32", False, "sdpa", True),
                        "+bf16+dequantized": ("bfloat16", True, "sdpa", False),
                        "+bf16+dequantized+cheap dropout": ("bfloat16", True, "sdpa", True),
                        "+bf16+dequantized+cheap dropout+split passes": ("bfloat16", True, "sdpa", True),
                        "+bf16+dequantized+no dropout+split passes": ("bfloat16", True, "sdpa", False),
                        "+bf16+dequantized+no dropout+split passes+compiled blocks": ("bfloat16", True, "sdpa",
                                                                                       False),
                        "+bf16+dequantized+no dropout+split passes+matmul attention": ("bfloat16", True, "matmul",
                                                                                        False),
                        "+bf16+dequantized+no dropout+split passes+matmul attention+compiled blocks":
                            ("bfloat16", True, "matmul", False)}
    assert {x["rows"] for x in r["runs"]} == {8}  # same effective batch, same rows
    assert len({x["real_tokens"] for x in r["runs"]}) == 1  # the same text, each row once
    assert run["tutorial"]["padding_fraction"] == 0  # batch 1 never pads
    # float32 arms on the same rows: de-quantizing once or another attention kernel computes the same numbers
    assert abs(run["+dequantized"]["eval_loss"] - run["default"]["eval_loss"]) < 1e-3
    assert abs(run["+eager"]["eval_loss"] - run["default"]["eval_loss"]) < 1e-3
    layers, hidden, kv, inner = 2, 64, 32, 128  # tests/conftest.py's tiny Llama: q,o 64x64; k,v 64x32; MLP 3 x 64x128
    for x in r["runs"]:
        assert x["seconds"] > 0 and x["peak_rss_mb"] > 0 and x["matmul_gflops"] > 0 and math.isfinite(x["eval_loss"])
        assert x["matmul_params"] == layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner)
    from benchmarks.report import train_table

    assert train_table(r) in out


def test_training_benchmark_runs_the_arms_asked_for(tmp_path, tiny_llama_dir, dialogsum_dir):
    common = ["-m", "benchmarks.bench_train", "--base", str(tiny_llama_dir), "--data", str(dialogsum_dir),
              "--steps", "1", "--eval-rows", "2", "--repeats", "1"]
    bench(*common, "--arms", "+cheap dropout,default", "--json", str(tmp_path / "t.json"))
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["arms"] == ["default", "+cheap dropout"] == [x["arm"] for x in r["runs"]] and r["eval_rows"] == 2
    for extra, message in ((["--arms", "+bf16"], "must include default"),
                           (["--arms", "default,+fast"], "unknown ['+fast']"),
                           (["--rows", "widest", "--steps", "101"], "the train stage runs 100 steps")):
        proc = subprocess.run([sys.executable, *common, *extra], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_training_benchmark_on_the_widest_batches_splits_them_where_the_stage_would(tmp_path, tiny_llama_dir,
                                                                                    dialogsum_dir):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["max_tokens_per_pass"] = 64  # the tiny model's rows are short: a budget that splits them
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["-m", "benchmarks.bench_train", "--base", str(tiny_llama_dir), "--data", str(dialogsum_dir),
              "--params", str(tmp_path / "params.yaml"), "--steps", "1", "--eval-rows", "2", "--repeats", "1"]
    split = "+bf16+dequantized+cheap dropout+split passes"
    runs = {}
    for rows in ("first", "widest"):
        bench(*common, "--rows", rows, "--arms", f"default,{split}", "--json", str(tmp_path / f"{rows}.json"))
        r = json.loads((tmp_path / f"{rows}.json").read_text())
        assert r["row_selection"] == rows
        runs[rows] = {x["arm"]: x for x in r["runs"]}
    first, widest = runs["first"], runs["widest"]
    # the widest batches hold more tokens than the first ones; both arms train on the same rows
    assert widest["default"]["real_tokens"] > first["default"]["real_tokens"]
    assert widest[split]["real_tokens"] == widest["default"]["real_tokens"]
    # one optimizer step = 2 batches of 2 rows: one pass each, or (over 64 tokens) one pass per row
    assert widest["default"]["passes"] == 2 and widest[split]["passes"] == 4
    assert widest[split]["max_tokens_per_pass"] == 64 and widest["default"]["max_tokens_per_pass"] is None


def test_generation_benchmark_interleaves_the_arms_and_compares_summaries(tmp_path, tiny_llama_dir, dialogsum_dir):
    out = bench("-m", "benchmarks.bench_generate", "--base", str(tiny_llama_dir), "--adapter", "",
                "--data", str(dialogsum_dir), "--dialogues", "4", "--new-tokens", "30", "--repeats", "2",
                "--json", str(tmp_path / "g.json"))
    r = json.loads((tmp_path / "g.json").read_text())
    arms = ["tutorial", "tutorial_bf16", "static_bf16", "stage"]
    assert [x["arm"] for x in r["runs"]] == arms * 2  # interleaved
    assert all(x["seconds"] > 0 and x["peak_rss_mb"] > 0 and x["matmul_gflops"] > 0 for x in r["runs"])
    setting = {a: {(x["weights"], x["compute_dtype"], x["batch_size"]) for x in r["runs"] if x["arm"] == a}
               for a in arms}
    stage_dtype = resolve_compute_dtype("auto")  # params.yaml's auto, on this machine
    stage_weights = "4-bit" if stage_dtype == "float32" else f"de-quantized to {stage_dtype}"
    assert setting == {"tutorial": {("4-bit", "float32", 1)}, "tutorial_bf16": {("4-bit", "bfloat16", 1)},
                       "static_bf16": {("de-quantized to bfloat16", "bfloat16", 8)},
                       "stage": {(stage_weights, stage_dtype, 8)}}
    assert "summaries" not in r["runs"][0]  # the JSON does not quote the data
    assert all(x["identical_to_tutorial"] == 4 for x in r["runs"] if x["arm"] == "tutorial")
    if stage_dtype == "float32":  # no bf16 rounding: continuous batching gives the tutorial's summaries
        assert all(x["identical_to_tutorial"] == 4 for x in r["runs"] if x["arm"] == "stage"), out
    assert 0 <= r["runs"][0]["rouge1"] <= 100
    from benchmarks.report import generate_table

    assert generate_table(r) in out  # the script prints the table of what it wrote (its figures: tests/test_report.py)


def test_evaluation_benchmark_times_the_trainers_pass_by_row_order_and_batch(tmp_path, tiny_release, dialogsum_dir):
    out = bench("-m", "benchmarks.bench_eval", "--base", str(tiny_release / "base"), "--adapter",
                str(tiny_release / "adapter"), "--data", str(dialogsum_dir), "--rows", "6", "--repeats", "1",
                "--json", str(tmp_path / "e.json"))  # one repeat: interleaving is the generation benchmark's test
    r = json.loads((tmp_path / "e.json").read_text())
    arms = ["file_order_b2", "shortest_first_b2", "file_order_b1", "shortest_first_b4", "file_order_b8",
            "shortest_first_b8"]
    assert [x["arm"] for x in r["runs"]] == arms
    run = {x["arm"]: x for x in r["runs"]}
    assert {x["rows"] for x in r["runs"]} == {6} and len({x["real_tokens"] for x in r["runs"]}) == 1  # same rows
    assert run["file_order_b1"]["padding_tokens"] == 0
    assert run["shortest_first_b2"]["padding_tokens"] < run["file_order_b2"]["padding_tokens"]
    assert run["shortest_first_b8"]["padding_tokens"] == run["file_order_b8"]["padding_tokens"]  # one batch of 6
    losses = [x["eval_loss"] for x in r["runs"]]
    assert max(losses) - min(losses) < 1e-3  # the loss is per row: neither the order nor the batch changes it
    assert all(x["seconds"] > 0 and x["peak_rss_mb"] > 0 for x in r["runs"])
    from benchmarks.report import eval_table

    assert eval_table(r) in out


def test_serving_benchmark_runs_both_schedulers_idle_and_mixed_interleaved(tmp_path, tiny_release, dialogsum_dir):
    """The fifo arm is a server exported from a git revision (HEAD here: any clone has it); the mechanism is the
    point, the figures are tests/test_report.py's."""
    out = bench("-m", "benchmarks.bench_serve", "--base", str(tiny_release / "base"), "--adapter",
                str(tiny_release / "adapter"), "--params", str(tiny_release / "params.yaml"), "--data",
                str(dialogsum_dir), "--big", "1", "--big-size", "6", "--small", "5", "--repeats", "2",
                "--baseline-rev", "HEAD", "--json", str(tmp_path / "s.json"))
    r = json.loads((tmp_path / "s.json").read_text())
    order = [(x["repeat"], x["arm"], x["phase"]) for x in r["runs"]]
    assert order == [(0, "fifo", "idle"), (0, "fifo", "mixed"), (0, "fair", "idle"), (0, "fair", "mixed"),
                     (1, "fair", "idle"), (1, "fair", "mixed"), (1, "fifo", "idle"), (1, "fifo", "mixed")]
    for x in r["runs"]:
        kinds = [q["class"] for q in x["requests"]]
        assert kinds.count("big") == (1 if x["phase"] == "mixed" else 0) and kinds.count("small") >= 4
        assert x["phase"] == "mixed" or kinds.count("small") == 5
        assert all(q["latency"] > 0 for q in x["requests"]) and x["seconds"] > 0
        assert {q["dialogues"] for q in x["requests"] if q["class"] == "big"} <= {6}
    assert min(r["peak_rss_mb"].values()) > 0 and "summary" not in json.dumps(r)
    from benchmarks.report import serve_table

    assert serve_table(r) in out


def test_gpu_check_runs_on_cpu_with_a_tiny_phi(tmp_path, dialogsum_dir):
    """scripts/gpu_check.sh at toy size: the pipeline through dvc repro with the GPU params, training killed after
    its first checkpoint and resumed, then benchmarks/gpu.sh on the same model: three of its training arms (the
    tutorial's, the default, and the one compiling the blocks, here Phi's; every arm runs in
    test_training_benchmark_runs_each_lever_alone_and_together_interleaved)."""
    script = "import subprocess, sys; sys.exit(subprocess.call(['bash', 'scripts/gpu_check.sh', sys.argv[1]]))"
    arms = ["tutorial", "default", ARMS[-1]]
    out = bench("-c", script, str(tmp_path / "gpu"),
                env={"SIZE": "tiny-phi", "DATA": str(dialogsum_dir), "STEPS": "6", "DIALOGUES": "2",
                     "NEW_TOKENS": "10", "BENCH_STEPS": "1", "REPEATS": "1", "PYTHON": sys.executable,
                     "TRAIN_ARMS": ",".join(arms)})
    summary = (tmp_path / "gpu/summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["PASS  1 model", "PASS  2 pipeline", "PASS  3 resume",
                                                         "PASS  4 benchmark"], out
    proj = tmp_path / "gpu/project"
    import yaml

    p = yaml.safe_load((proj / "params.yaml").read_text())  # the GPU recipe, cut short
    assert (p["model"]["quant_type"], p["model"]["compute_dtype"], p["train"]["optim"]) == ("nf4", "auto",
                                                                                             "paged_adamw_8bit")
    assert p["train"]["gradient_checkpointing"] and p["model"]["load_in_4bit"]
    assert p["model"]["name"] == str(tmp_path / "gpu/model")
    timing = json.loads((proj / "plots/training/timing.json").read_text())
    assert timing["resumed_from"] == "checkpoint-2" and timing["steps_this_run"] == 4
    assert "resuming from models/checkpoints/checkpoint-2" in (tmp_path / "gpu/repro-resumed.log").read_text()
    assert json.loads((proj / "metrics/rouge.json").read_text())["num_dialogues"] == 2
    info = json.loads((tmp_path / "gpu/model/base_info.json").read_text())
    assert info["model_type"] == "phi" and info["source"] == "random-tiny-phi"
    train = json.loads((tmp_path / "gpu/bench/train.json").read_text())
    gen = json.loads((tmp_path / "gpu/bench/generate.json").read_text())
    assert {x["rows"] for x in train["runs"]} == {4} and [x["arm"] for x in train["runs"]] == arms  # once each
    assert [x["compiled_blocks"] for x in train["runs"]] == [False, False, True]
    assert {x["identical_to_tutorial"] for x in gen["runs"] if x["arm"] == "tutorial"} == {2}  # bf16 arms may differ
    assert {x["arm"] for x in gen["runs"]} == {"tutorial", "tutorial_bf16", "static_bf16", "stage"}
