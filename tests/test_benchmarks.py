"""The benchmark scripts run end to end on tiny models (CPU) and report what they claim to."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def bench(*argv, env=None):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_training_benchmark_compares_the_tutorial_recipe_with_ours(tmp_path, tiny_llama_dir, dialogsum_dir):
    out = bench("-m", "benchmarks.bench_train", "--base", str(tiny_llama_dir), "--data", str(dialogsum_dir),
                "--steps", "2", "--eval-rows", "3", "--json", str(tmp_path / "t.json"))
    assert "| real tokens / s |" in out and "matmul peak" in out
    r = json.loads((tmp_path / "t.json").read_text())
    b, o = r["baseline"], r["ours"]
    assert (b["batch"], b["checkpointing"]) == ("1 x 4", True)  # the tutorial's recipe
    assert (o["batch"], o["checkpointing"]) == ("2 x 2", False)  # params.yaml's
    assert b["rows"] == o["rows"] == 8  # same effective batch, same rows
    assert b["real_tokens"] == o["real_tokens"] > 0  # the same text, each row once
    assert b["padding_fraction"] == 0  # batch 1 never pads
    assert 0 <= o["padding_fraction"] < 1
    assert r["matmul_peak_gflops"] > 0
    layers, hidden, kv, inner = 2, 64, 32, 128  # tests/conftest.py's tiny Llama: q,o 64x64; k,v 64x32; MLP 3 x 64x128
    for a in (b, o):
        assert a["seconds"] > 0 and a["peak_rss_mb"] > 0 and math.isfinite(a["eval_loss"])
        assert a["matmul_params"] == layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner)


def test_generation_benchmark_interleaves_the_arms_and_compares_summaries(tmp_path, tiny_llama_dir, dialogsum_dir):
    out = bench("-m", "benchmarks.bench_generate", "--base", str(tiny_llama_dir), "--adapter", "",
                "--data", str(dialogsum_dir), "--dialogues", "4", "--new-tokens", "30", "--repeats", "2",
                "--json", str(tmp_path / "g.json"))
    r = json.loads((tmp_path / "g.json").read_text())
    assert [x["arm"] for x in r["runs"]] == ["tutorial", "batched", "dequantized", "ours"] * 2  # interleaved
    assert all(x["seconds"] > 0 and x["peak_rss_mb"] > 0 and x["matmul_gflops"] > 0 for x in r["runs"])
    assert {x["weights"] for x in r["runs"] if x["arm"] in ("tutorial", "batched")} == {"4-bit"}
    assert {x["weights"] for x in r["runs"] if x["arm"] in ("dequantized", "ours")} == {"de-quantized to float32"}
    assert all(x["identical_to_tutorial"] == 4 for x in r["runs"]), out  # batching, de-quantizing change nothing
    assert "summaries" not in r["runs"][0]  # the JSON does not quote the data
    from benchmarks.report import generate_table

    assert generate_table(r) in out and "| **1.00x** (1.00-1.00) |" in generate_table(r)


def test_gpu_script_runs_on_cpu_with_a_tiny_phi(tmp_path, tiny_phi_dir, dialogsum_dir):
    out = bench("-c", "import subprocess, sys; sys.exit(subprocess.call(['bash', 'benchmarks/gpu.sh', sys.argv[1]]))",
                str(tmp_path / "gpu"),
                env={"SIZE": "tiny-phi", "TOKENIZER": str(tiny_phi_dir), "DATA": str(dialogsum_dir),
                     "STEPS": "1", "DIALOGUES": "2", "NEW_TOKENS": "20", "REPEATS": "1",
                     "PYTHON": sys.executable})
    assert "device: cpu" in out
    info = json.loads((tmp_path / "gpu" / "model" / "base_info.json").read_text())
    assert info["model_type"] == "phi" and info["source"] == "random-tiny-phi"
    train = json.loads((tmp_path / "gpu" / "train.json").read_text())
    gen = json.loads((tmp_path / "gpu" / "generate.json").read_text())
    assert train["baseline"]["rows"] == train["ours"]["rows"] == 4
    assert {x["identical_to_tutorial"] for x in gen["runs"]} == {2}
