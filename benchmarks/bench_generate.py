"""Generation throughput: the tutorial's loop vs this pipeline, same model, dialogues and machine.

    python -m benchmarks.bench_generate --base models/base --adapter models/adapter --data ../shared/dialogsum

- baseline (the tutorial): one dialogue at a time, always 100 new tokens (--new-tokens), then the text is cut
  at the end marker;
- ours (the generate stage, sumlora.generation): length-sorted, left-padded batches of
  ``generate.batch_size``, each sequence stopping at the end marker or EOS, KV cache.

Both decode greedily with at most 100 new tokens; the summaries (text before the end marker,
or before EOS) must be identical. Each arm runs in a fresh process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, arm_parser, device, load_rows, machine, peak_memory_mb, run_arm, table

ARMS = ("baseline", "ours")


def arm(args) -> dict:
    import torch

    from sumlora.core.params import load_params
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer
    from sumlora.prompt import DEFAULT, PromptTemplate
    from sumlora.tokenizing import encode_prompt

    params = load_params(args.params)
    params.model.compute_dtype = "bfloat16" if device() == "cuda" else "float32"
    model, tok = load_model_and_tokenizer(args.base, params.model, args.adapter)
    model.to(device())
    template = PromptTemplate.load(args.adapter) if args.adapter else DEFAULT
    dialogues = [r["dialogue"] for r in load_rows(args.data, "test", args.dialogues)]
    sync = torch.cuda.synchronize if device() == "cuda" else (lambda: None)
    generated_tokens = 0
    sync()
    start = time.perf_counter()
    if args.arm == "baseline":
        summaries = []
        with torch.inference_mode():
            for d in dialogues:  # one at a time, greedy with the KV cache, never stopping early
                ids = torch.tensor([encode_prompt(tok, template, d)], device=device())
                past, new = None, []
                for _ in range(args.new_tokens):
                    out = model(input_ids=ids, past_key_values=past, use_cache=True)
                    past, ids = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    new.append(int(ids))
                generated_tokens += len(new)
                if tok.eos_token_id in new:  # the text ends at EOS, as in the pipeline
                    new = new[:new.index(tok.eos_token_id)]
                summaries.append(template.extract_summary(tok.decode(new, skip_special_tokens=True)))
    else:
        summaries = generate_summaries(model, tok, template, dialogues, batch_size=params.generate.batch_size,
                                       max_new_tokens=args.new_tokens)
    sync()
    seconds = time.perf_counter() - start
    return {"arm": args.arm, "seconds": seconds, "dialogues": len(dialogues), "summaries": summaries,
            "generated_tokens": generated_tokens, "new_tokens": args.new_tokens,
            "batch_size": 1 if args.arm == "baseline" else params.generate.batch_size, **peak_memory_mb()}


def main(argv: list[str]) -> None:
    ap = arm_parser(__doc__, ARMS)
    ap.add_argument("--adapter", type=Path, default=ROOT / "models/adapter", help="'' for the base model alone")
    ap.add_argument("--dialogues", type=int, default=32, help="test dialogues to summarize")
    ap.add_argument("--new-tokens", type=int, default=100, help="the tutorial's fixed generation length")
    args = ap.parse_args(argv)
    args.adapter = args.adapter if args.adapter and str(args.adapter) not in ("", ".") else None
    if args.arm:
        args.result.write_text(json.dumps(arm(args)))
        return

    common = ["--base", str(args.base), "--adapter", str(args.adapter or ""), "--data", str(args.data),
              "--params", str(args.params), "--dialogues", str(args.dialogues), "--new-tokens", str(args.new_tokens)]
    b, o = (run_arm(__spec__.name, ["--arm", a, *common]) for a in ARMS)
    same = sum(x == y for x, y in zip(b["summaries"], o["summaries"]))
    mem = "peak_gpu_mb" if "peak_gpu_mb" in b else "peak_rss_mb"
    rate = {r["arm"]: r["dialogues"] / r["seconds"] for r in (b, o)}
    rows = [
        ("dialogues per call", b["batch_size"], o["batch_size"], ""),
        ("wall time (s)", f"{b['seconds']:.1f}", f"{o['seconds']:.1f}", ""),
        ("summaries / s", f"{rate['baseline']:.3f}", f"{rate['ours']:.3f}",
         f"**{rate['ours'] / rate['baseline']:.2f}x**"),
        ("identical summaries", "", f"{same} of {len(b['summaries'])}", ""),
        (mem.replace("_", " "), b[mem], o[mem], f"{o[mem] / b[mem]:.2f}"),
    ]
    print(f"\nmachine: {machine()}; {b['dialogues']} test dialogues, greedy, at most {args.new_tokens} new tokens; "
          f"adapter: {args.adapter}")
    print(table(rows, ("generation", "baseline (tutorial)", "ours", "ours / baseline")))
    for i, (x, y) in enumerate(zip(b["summaries"], o["summaries"])):
        if x != y:
            print(f"differs, dialogue {i}:\n  baseline: {x!r}\n  ours:     {y!r}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "baseline": b, "ours": o}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
