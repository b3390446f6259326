"""Generation throughput against the tutorial's own call, same adapter, prompts, dialogues and machine.

    python -m benchmarks.bench_generate --base models/base --adapter models/adapter --data ../shared/dialogsum \
        --dialogues 32 --repeats 3 --json benchmarks/results/generate-cpu.json

Arms (each run in a fresh process; the arms interleaved, A B C D A B C D ..., ``--repeats`` times):
- ``tutorial``: what a user of the tutorial calls: one dialogue at a time through
  ``model.generate(**inputs, max_new_tokens=100)`` on the 4-bit base with the peft adapter, with
  generate's default stopping (the model's end-of-sequence tokens). Greedy, where the tutorial
  samples at temperature 0.1, so that the summaries can be compared.
- ``batched``: the generate stage as configured (batches of ``generate.batch_size``, 4-bit weights,
  ``generate.dequantize: none``): batching alone.
- ``dequantized``: one dialogue at a time with the weights de-quantized once to float32 and the
  adapter merged in (``generate.dequantize: float32``, batch 1): de-quantizing alone.
- ``batched_dequantized``: both (batches of ``generate.batch_size``, ``generate.dequantize: float32``).
- ``batched_bf16``: batches, with the weights de-quantized once to bfloat16 and the adapter merged in
  (``generate.dequantize: bfloat16``, what ``auto`` picks on a CPU with native bfloat16 matmuls).

Every arm's summaries are cut at the template's end marker, compared with the tutorial arm's, and
scored with ROUGE-1/L against all references (as the evaluate stage's ``all_refs``).
The JSON holds every run (seconds, peak memory, tokens generated, a hash of the summaries), not
the summaries themselves (they quote DialogSum). ``python -m benchmarks.report`` makes the tables.
"""

from __future__ import annotations

import hashlib
import json
import time

from benchmarks.common import (
    ROOT,
    arm_parser,
    device,
    machine,
    peak_memory_mb,
    publish,
    run_interleaved,
    test_dialogues,
)
from sumlora.core import atomic, cli

ARMS = ("tutorial", "batched", "dequantized", "batched_dequantized", "batched_bf16")
DEQUANTIZE = {"dequantized": "float32", "batched_dequantized": "float32", "batched_bf16": "bfloat16"}


def arm(args) -> dict:
    import torch

    from sumlora.core.device import resolve_compute_dtype
    from sumlora.core.params import load_params
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer, resolve_dequantize
    from sumlora.prompt import DEFAULT, PromptTemplate
    from sumlora.tokenizing import encode_prompt

    params = load_params(args.params)
    params.model.compute_dtype = resolve_compute_dtype("auto")  # bf16 on GPUs that have it natively, fp16 on older
    dequantize_to = resolve_dequantize(DEQUANTIZE.get(args.arm, "none"), params.model)
    model, tok = load_model_and_tokenizer(args.base, params.model, args.adapter, dequantize_to)
    template = PromptTemplate.load(args.adapter) if args.adapter else DEFAULT
    dialogues = [r["dialogue"] for r in test_dialogues(args.data, args.dialogues)]
    sync = torch.cuda.synchronize if device() == "cuda" else (lambda: None)
    new_tokens = 0
    sync()
    start = time.perf_counter()
    if args.arm == "tutorial":
        summaries = []
        with torch.inference_mode():
            for d in dialogues:
                if template.chat:  # what a user of a chat model calls
                    inputs = tok.apply_chat_template(template.user_turn(d), add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True).to(device())
                else:
                    inputs = tok(template.render_prompt(d), return_tensors="pt").to(device())
                assert inputs["input_ids"][0].tolist() == encode_prompt(tok, template, d)  # the same prompt
                out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                new = out[0, inputs["input_ids"].shape[1]:]
                new_tokens += len(new)
                summaries.append(template.extract_summary(tok.decode(new, skip_special_tokens=True)))
    else:
        batch = 1 if args.arm == "dequantized" else params.generate.batch_size
        summaries = generate_summaries(model, tok, template, dialogues, batch_size=batch,
                                       max_new_tokens=args.new_tokens)
    sync()
    seconds = time.perf_counter() - start
    return {"arm": args.arm, "seconds": seconds, "dialogues": len(dialogues), "summaries": summaries,
            "weights": f"de-quantized to {dequantize_to}" if dequantize_to else "4-bit",
            "batch_size": 1 if args.arm in ("tutorial", "dequantized") else params.generate.batch_size,
            "tutorial_new_tokens": new_tokens or None, **peak_memory_mb()}


def digest(summaries: list[str]) -> str:
    return hashlib.sha256(json.dumps(summaries).encode()).hexdigest()[:16]


def parser():
    ap = arm_parser("benchmarks.bench_generate", __doc__, ARMS)
    cli.input(ap, "--adapter", default=ROOT / "models/adapter", help="'' for the base model alone")
    ap.add_argument("--dialogues", type=int, default=32, help="test dialogues to summarize")
    ap.add_argument("--new-tokens", type=int, default=100, help="max_new_tokens (the tutorial's 100)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each arm, interleaved")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    args.adapter = args.adapter if args.adapter and str(args.adapter) not in ("", ".") else None
    if args.arm:
        atomic.write_text(args.result, json.dumps(arm(args)))
        return

    common = ["--base", str(args.base), "--adapter", str(args.adapter or ""), "--data", str(args.data),
              "--params", str(args.params), "--dialogues", str(args.dialogues), "--new-tokens", str(args.new_tokens)]
    runs = run_interleaved(__spec__.name, ARMS, common, args.repeats)
    from sumlora.evaluation.rouge import corpus_scores

    reference = next(r["summaries"] for r in runs if r["arm"] == "tutorial")
    refs = [g["references"] for g in test_dialogues(args.data, args.dialogues)]
    for r in runs:  # keep the comparison and the scores, not the text (it quotes DialogSum)
        summaries = r.pop("summaries")
        r["summaries_sha256"] = digest(summaries)
        r["identical_to_tutorial"] = sum(x == y for x, y in zip(summaries, reference))
        scores = corpus_scores(summaries, refs)  # against all references, as the evaluate stage scores
        r["rouge1"], r["rougeL"] = scores["rouge1"], scores["rougeL"]
    result = {"benchmark": "generate", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "adapter": str(args.adapter), "dialogues": args.dialogues, "max_new_tokens": args.new_tokens,
              "repeats": args.repeats, "arms": list(ARMS), "runs": runs}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
