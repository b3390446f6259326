"""Generation throughput against the tutorial's own call, same adapter, prompts, dialogues and machine.

    python -m benchmarks.bench_generate --base models/base --adapter models/adapter --data ../shared/dialogsum \
        --dialogues 32 --repeats 3 --json benchmarks/results/generate-cpu.json

Arms (each run in a fresh process; the arms interleaved, A B C D A B C D ..., ``--repeats`` times):
- ``tutorial``: what a user of the tutorial calls: one dialogue at a time through
  ``model.generate(**inputs, max_new_tokens=100)`` on the 4-bit base with the peft adapter, with
  generate's default stopping (the model's end-of-sequence tokens), 4-bit compute in float32 (what the
  tutorial's float16 becomes on a CPU without float16 matmuls). Greedy, where the tutorial samples at
  temperature 0.1, so that the summaries can be compared.
- ``tutorial_bf16``: the same call with the 4-bit layers computing in bfloat16 (``bnb_4bit_compute_dtype``),
  the best a tutorial user gets by changing one argument on a CPU with native bf16.
- ``static_bf16``: weights de-quantized once to bfloat16, adapter merged in, ``model.generate`` on static
  left-padded batches of ``generate.batch_size`` dialogues sorted by length (each batch runs until its longest
  summary ends): how the generate stage batched before continuous batching.
- ``stage``: the generate stage as configured (``generate.dequantize: auto``, continuous batching of
  ``generate.batch_size`` rows: a finished row leaves the batch and the next prompt joins it).

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

ARMS = ("tutorial", "tutorial_bf16", "static_bf16", "stage")
DEQUANTIZE = {"static_bf16": "bfloat16", "stage": "auto"}
COMPUTE = {"tutorial": "float32", "tutorial_bf16": "bfloat16", "static_bf16": "bfloat16"}  # stage: params'


def arm(args) -> dict:
    import torch

    from sumlora.core.device import resolve_compute_dtype
    from sumlora.core.params import load_params
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer, resolve_dequantize
    from sumlora.prompt import DEFAULT, PromptTemplate
    from sumlora.tokenizing import encode_prompt

    params = load_params(args.params)
    if device() == "cuda":  # the tutorial's float16 on a GPU; elsewhere the arm's dtype
        params.model.compute_dtype = "float16" if args.arm.startswith("tutorial") else resolve_compute_dtype("auto")
    else:
        params.model.compute_dtype = COMPUTE.get(args.arm, params.model.compute_dtype)
    dequantize_to = resolve_dequantize(DEQUANTIZE.get(args.arm, "none"), params.model)
    model, tok = load_model_and_tokenizer(args.base, params.model, args.adapter, dequantize_to)
    template = PromptTemplate.load(args.adapter) if args.adapter else DEFAULT
    dialogues = [r["dialogue"] for r in test_dialogues(args.data, args.dialogues)]
    sync = torch.cuda.synchronize if device() == "cuda" else (lambda: None)
    new_tokens = 0
    sync()
    start = time.perf_counter()
    if args.arm.startswith("tutorial"):
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
    elif args.arm == "static_bf16":
        summaries = static_batches(model, tok, template, dialogues, params.generate.batch_size, args.new_tokens)
    else:
        summaries = generate_summaries(model, tok, template, dialogues, batch_size=params.generate.batch_size,
                                       max_new_tokens=args.new_tokens)
    sync()
    seconds = time.perf_counter() - start
    return {"arm": args.arm, "seconds": seconds, "dialogues": len(dialogues), "summaries": summaries,
            "weights": f"de-quantized to {dequantize_to}" if dequantize_to else "4-bit",
            "compute_dtype": resolve_compute_dtype(params.model.compute_dtype),
            "batch_size": 1 if args.arm.startswith("tutorial") else params.generate.batch_size,
            "tutorial_new_tokens": new_tokens or None, **peak_memory_mb()}


def static_batches(model, tok, template, dialogues: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """``model.generate`` on static batches: prompts sorted by length, left-padded, each batch decoding until
    its last row ends (the batching continuous batching replaces)."""
    import torch

    from sumlora.generation import end_token_ids, summary_prompts

    prompts = summary_prompts(tok, template, dialogues)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            take = order[b:b + batch_size]
            batch = tok.pad({"input_ids": [prompts[i] for i in take]}, padding_side="left",
                            return_tensors="pt").to(device())
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=end_token_ids(model.generation_config, tok),
                                 stop_strings=template.stop_strings() or None, tokenizer=tok,
                                 pad_token_id=tok.pad_token_id)
            for k, i in enumerate(take):
                text = tok.decode(gen[k, batch["input_ids"].shape[1]:], skip_special_tokens=True)
                out[i] = template.extract_summary(text)
    return out


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
