"""What a user of the release gets, scored against the pipeline: the model card's code, and the GGUF export.

    python -m sumlora.export_gguf models/release models/gguf --types bf16,q8_0
    python -m benchmarks.bench_release --release models/release --gguf models/gguf \
        --predictions data/predictions/finetuned.jsonl --json benchmarks/results/release-cpu.json

The card's code (the ```python block of the release's README.md) runs as written, on the release's
``merged/`` model, in its own process: static batches with ``generate``, where the generate stage batched
continuously, so in bfloat16 a few summaries can follow other rounding. Each GGUF file is read back with
transformers' GGUF loader (an independent reader: the gguf package de-quantizes, transformers undoes
llama.cpp's rotary order) in the dtype the generate stage computed with (its run record in release.json), and
summarizes the dialogues of the pipeline's predictions file with the generate stage's own decoding (its batch,
token cap and beams). For each: how many summaries are identical to the pipeline's, and ROUGE against the
references (all references and the first one), beside the pipeline's own scores on the same dialogues. The
unquantized file should give the pipeline's summaries; a quantized one is held to ``TOLERANCE`` ROUGE points
(``python -m benchmarks.report`` says whether each is within it).

This checks the weights and the tokenizer in the files, computed by PyTorch; it does not run llama.cpp's
own kernels (the package registry has no llama.cpp runtime that reads these files).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import arm_parser, machine, peak_memory_mb, publish
from sumlora.core import cli
from sumlora.core.errors import SumloraError
from sumlora.testing import run_card_code

TOLERANCE = 1.0  # ROUGE points (F1 x100) a quantized file may lose against the pipeline, all references


def scores(predictions: list[str], references: list[list[str]]) -> dict:
    """Mean ROUGE-1 / ROUGE-L F1 x100, against all references and the first."""
    from sumlora.evaluation.scores import ROUGE_TYPES, per_example

    table = per_example(predictions, references)
    return {f"{t}_{scoring}": round(float(table[scoring][:, ROUGE_TYPES.index(t)].mean()), 2)
            for scoring in ("all_refs", "first_ref") for t in ("rouge1", "rougeL")}


def parser():
    ap = arm_parser("benchmarks.bench_release", __doc__, ())
    cli.input(ap, "--release", default=Path("models/release"))
    cli.input(ap, "--gguf", default=Path("models/gguf"), help="the export directory (sumlora.export_gguf)")
    cli.input(ap, "--predictions", default=Path("data/predictions/finetuned.jsonl"))
    ap.add_argument("--dialogues", type=int, default=None, help="the first N of the predictions file (all)")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    if args.dialogues is not None and args.dialogues < 1:
        raise SumloraError(f"--dialogues: must be >= 1, got {args.dialogues}")
    cli.offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sumlora.generation import generate_summaries
    from sumlora.prompt import PromptTemplate

    release = args.release
    run = json.loads((release / "release.json").read_text())["generation"]
    template = PromptTemplate.load(release)
    rows = [json.loads(x) for x in args.predictions.read_text().splitlines()][:args.dialogues]
    dialogues, references = [r["dialogue"] for r in rows], [r["references"] for r in rows]
    pipeline = [r["prediction"] for r in rows]
    dtype = run["dequantize_to"] or run["compute_dtype"]
    export = json.loads((args.gguf / "export.json").read_text())
    result = {"benchmark": "release", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "dialogues": len(rows), "compute_dtype": dtype, "tolerance": TOLERANCE, "generation": run,
              "pipeline": scores(pipeline, references), "files": []}
    for entry in export["files"]:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(args.gguf, gguf_file=entry["file"],
                                                     dtype=getattr(torch, dtype)).eval()
        tok = AutoTokenizer.from_pretrained(args.gguf, gguf_file=entry["file"])
        summaries = generate_summaries(model, tok, template, dialogues, run["batch_size"], run["max_new_tokens"],
                                       num_beams=run["num_beams"], length_penalty=run["length_penalty"])
        result["files"].append({"file": entry["file"], "type": entry["type"], "seconds": time.perf_counter() - start,
                                "identical_to_pipeline": sum(a == b for a, b in zip(summaries, pipeline)),
                                **scores(summaries, references), **peak_memory_mb()})
        print(json.dumps(result["files"][-1]), flush=True)
    card, seconds = run_card_code(release, dialogues)
    result["card"] = {"seconds": seconds, "identical_to_pipeline": sum(a == b for a, b in zip(card, pipeline)),
                      **scores(card, references)}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
