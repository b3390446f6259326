"""What the benchmarks share: the machine, its matmul peak, memory, data, and running one arm
of a comparison in a fresh process (so that each arm's peak memory is its own)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sumlora.core import atomic, cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = "benchmarks/results/"  # the committed raw results (git-tracked): --json may replace them


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from sumlora.core.device import cpu_description

    return f"{cpu_description()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0, dtype=None) -> float:
    """Best sustained square-matmul rate in ``dtype`` (default fp32 on CPU, bf16 on GPU), in GFLOP/s, measured now."""
    dev = device()
    dtype = dtype or (torch.bfloat16 if dev == "cuda" else torch.float32)
    if dev == "cuda":
        n = max(n, 8192)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def peak_memory_mb() -> dict:
    """Peak resident memory of this process (and peak GPU memory allocated), in MiB."""
    out = {"peak_rss_mb": cli.peak_rss_mb()}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = int(torch.cuda.max_memory_allocated() / 2**20)
    return out


def load_rows(data_dir: Path, split: str, n: int | None) -> list[dict]:
    """DialogSum rows (dialogue, summary); the test split keeps one row per dialogue."""
    from sumlora.data import read_jsonl

    rows, seen = [], set()
    for r in read_jsonl(Path(data_dir) / f"{split}.jsonl"):
        key = r.get("dialogue")
        if key in seen:
            continue
        seen.add(key)
        rows.append({"dialogue": r["dialogue"], "summary": r["summary"]})
    return rows[:n] if n else rows


def test_dialogues(data_dir: Path, n: int | None) -> list[dict]:
    """The first ``n`` test dialogues with all their references, grouped as the format stage groups them."""
    from sumlora.data import group_references, read_jsonl

    groups = group_references(read_jsonl(Path(data_dir) / "test.jsonl"))
    return groups[:n] if n else groups


def arm_parser(command: str, doc: str, arms: tuple[str, ...]):
    """The arguments every benchmark takes: inputs, --json, and the hidden --arm/--result of a child run."""
    import argparse

    ap = cli.parser(command, doc)
    cli.input(ap, "--base", default=ROOT / "models/base")
    cli.input(ap, "--data", default=ROOT.parent / "shared/dialogsum")
    cli.input(ap, "--params", default=ROOT / "params.yaml")
    ap.add_argument("--arm", choices=arms, help=argparse.SUPPRESS)
    cli.output(ap, "--result", help=argparse.SUPPRESS)
    cli.output(ap, "--json", tracked_ok=(RESULTS_DIR,), help="also write the figures here (benchmarks/results/...)")
    return ap


def run_arm(module: str, argv: list[str]) -> dict:
    """Run ``python -m module --arm ...`` in a fresh Python process (from the repository root); return the
    JSON it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arm.json"
        subprocess.run([sys.executable, "-m", module, *argv, "--result", str(out)], check=True, cwd=ROOT)
        return json.loads(out.read_text())


def run_interleaved(module: str, arms: tuple[str, ...], argv: list[str], repeats: int) -> list[dict]:
    """Every arm ``repeats`` times, interleaved (A B C A B C ...), each in a fresh process; before each run
    the matmul peaks are measured (1 s each: float32 and, on CPU, bfloat16), so that a run can be read against
    the machine's speed at that moment. Returns the runs in the order they ran, each with its ``repeat``,
    ``matmul_gflops`` and ``bf16_matmul_gflops``."""
    runs = []
    for rep in range(repeats):
        for a in arms:
            peak = matmul_peak_gflops(seconds=1.0)
            bf16 = matmul_peak_gflops(seconds=1.0, dtype=torch.bfloat16) if device() == "cpu" else peak
            r = run_arm(module, ["--arm", a, *argv])
            runs.append({**r, "repeat": rep, "matmul_gflops": round(peak, 1), "bf16_matmul_gflops": round(bf16, 1)})
            print(f"repeat {rep + 1}/{repeats} {a}: {r['seconds']:.1f} s (matmul peak {peak:.0f} GFLOP/s)",
                  flush=True)
    return runs


def publish(result: dict, json_path: Path | None, indent: int = 2) -> None:
    """Write the raw ``result`` to ``json_path`` (when given), then print its table (:mod:`benchmarks.report`)."""
    from benchmarks.report import TABLES

    if json_path:
        atomic.write_text(json_path, json.dumps(result, indent=indent) + "\n")
    print(TABLES[result["benchmark"]](result))


def any_tokenizer(tokenizer_dir: Path | None):
    """The tokenizer in ``tokenizer_dir``, else the embedded model's (from its GGUF file, offline)."""
    from transformers import AutoTokenizer

    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    from sumlora.convert import embedded_gguf_path

    gguf = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def build_random_model(kind: str, tokenizer_dir: Path | None, out_dir: Path) -> Path:
    """A randomly initialised causal LM saved as safetensors (no download): ``phi2`` has Phi-2's
    architecture and size (2.7 B parameters), ``tiny-phi`` the same architecture at toy size."""
    from transformers import PhiConfig, PhiForCausalLM

    tok = any_tokenizer(tokenizer_dir)
    shape = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32) if kind == "phi2" else dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    config = PhiConfig(vocab_size=max(51200, len(tok)), max_position_embeddings=2048, partial_rotary_factor=0.4,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.bos_token_id, **shape)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if kind == "phi2" else torch.float32
    with torch.device(device()):
        model = PhiForCausalLM(config).to(dtype)
    with atomic.output_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic.write_json(tmp / "base_info.json", {
            "source": f"random-{kind}", "model_type": "phi", "parameters": sum(p.numel() for p in model.parameters()),
            "max_positions": 2048})
    del model
    return Path(out_dir)


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def parser():
    ap = cli.parser("benchmarks.common", "Build a random model: python -m benchmarks.common phi2|tiny-phi OUT_DIR "
                    "[TOKENIZER_DIR]")
    ap.add_argument("action", choices=["random-model"])
    ap.add_argument("kind", choices=["phi2", "tiny-phi"])
    cli.output(ap, "out_dir", kind="dir")
    cli.input(ap, "tokenizer_dir", nargs="?", default=None)
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    print(f"{build_random_model(args.kind, args.tokenizer_dir, args.out_dir)}: random {args.kind} model")


if __name__ == "__main__":  # python -m benchmarks.common random-model KIND OUT_DIR [TOKENIZER_DIR]
    cli.run(main)
