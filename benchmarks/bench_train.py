"""Training throughput: the tutorial's recipe vs this pipeline, same model, data and machine.

    python -m benchmarks.bench_train --base models/base --data ../shared/dialogsum --steps 12

Both arms QLoRA-train the same 4-bit base with the same LoRA config for the same number of
optimizer steps at the same effective batch (4 rows), in a fresh process each:

- baseline (the tutorial): batch 1 x grad-accum 4, DataCollatorForLanguageModeling (loss on
  the whole text, pad = eos), gradient checkpointing, group_by_length, paged_adamw_8bit;
- ours (the train stage): params.yaml's train section (batch 4 x accum 1 by default, no
  checkpointing), batches of similar-length rows (sumlora.training.batching.length_grouped_order), loss
  on the summary tokens only with the LM head computed only there (summary_loss).

Reported per arm: time per optimizer step, real (non-padding) tokens/s, padding fraction,
model FLOP utilisation against the fp32 matmul peak measured in the same run, peak memory,
and the validation loss on the summary tokens (the task) after training.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from benchmarks.common import arm_parser, device, load_rows, machine, matmul_peak_gflops, peak_memory_mb, run_arm, table

ARMS = ("baseline", "ours")


def matmul_params(model) -> int:
    """Weights in the transformer blocks' linear layers (4-bit ones counted as the weights they hold)."""
    import torch

    n = 0
    for name, m in model.named_modules():
        if "lora_" in name or "lm_head" in name or hasattr(m, "base_layer") or getattr(m, "weight", None) is None:
            continue  # (peft's wrapper shares its base layer's weight: count that once, as the base layer)
        if isinstance(m, torch.nn.Linear) or type(m).__name__.startswith("Linear"):
            n += m.weight.numel() * (2 if type(m.weight).__name__ == "Params4bit" else 1)  # 2 per uint8
    return n


def validation_loss(model, tok, rows: list[dict], batch_size: int = 4) -> float:
    """Mean next-token loss on the summary + end marker + EOS tokens of ``rows`` (the task)."""
    import torch

    from sumlora.prompt import DEFAULT
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator
    from sumlora.training.trainer import summary_loss

    collate, total, count = PadCollator(tok.pad_token_id), 0.0, 0
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = collate([encode_example(tok, DEFAULT, r["dialogue"], r["summary"]) for r in rows[i:i + batch_size]])
            b = {k: v.to(dev) for k, v in b.items()}
            n = int((b["labels"][:, 1:] != -100).sum())
            total += float(summary_loss(model, b)[0]) * n
            count += n
    return total / count


def arm(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer

    from sumlora.core.params import load_params
    from sumlora.lora import prepare_qlora_model
    from sumlora.prompt import DEFAULT
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator, grouped_by_length
    from sumlora.training.trainer import trainer_class, training_arguments

    params = load_params(args.params)
    params.model.compute_dtype = "bfloat16" if device() == "cuda" else "float32"
    params.train.max_steps, params.train.warmup_steps = args.steps, 0
    baseline = args.arm == "baseline"
    if baseline:  # the tutorial's recipe
        params.train.batch_size, params.train.gradient_accumulation_steps = 1, 4
        params.train.gradient_checkpointing = True
    effective = params.train.batch_size * params.train.gradient_accumulation_steps
    train_rows = load_rows(args.data, "train", args.steps * effective)
    model, tok = prepare_qlora_model(args.base, params)
    encoded = [encode_example(tok, DEFAULT, r["dialogue"], r["summary"]) for r in train_rows]
    if baseline:
        # whole text, labels = input ids; pad = eos, so the collator masks EOS out of the loss
        tok.pad_token = tok.eos_token
        ds = Dataset.from_list([{"input_ids": e["input_ids"]} for e in encoded])
        collator = DataCollatorForLanguageModeling(tok, mlm=False)
        trainer_cls = Trainer
    else:
        ds = grouped_by_length(Dataset.from_list([{**e, "row": i} for i, e in enumerate(encoded)]), params.train,
                               params.seed)
        collator, trainer_cls = PadCollator(tok.pad_token_id), trainer_class()

    class Counting(trainer_cls):
        """Counts the real and padded tokens of every batch trained on (not the ones only collated)."""
        real = padded = 0

        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                mask = inputs["attention_mask"]
                Counting.real += int(mask.sum())
                Counting.padded += mask.numel()
            return super().compute_loss(model, inputs, *a, **kw)

    with tempfile.TemporaryDirectory() as out:
        # the baseline groups by length with transformers' own sampler, as the tutorial does
        sampling = {"train_sampling_strategy": "group_by_length"} if baseline else {}
        targs = training_arguments(params.train, params.seed, params.model.compute_dtype, out, eval_strategy="no",
                                   save_strategy="no", logging_steps=args.steps,
                                   learning_rate=2.0e-4, **sampling)
        trainer = Counting(model=model, args=targs, train_dataset=ds, data_collator=collator)
        if device() == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if device() == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    vrows = load_rows(args.data, "validation", args.eval_rows)
    return {"arm": args.arm, "seconds": seconds, "steps": args.steps, "rows": len(ds),
            "real_tokens": Counting.real, "padding_fraction": 1 - Counting.real / Counting.padded,
            "batch": f"{params.train.batch_size} x {params.train.gradient_accumulation_steps}",
            "checkpointing": params.train.gradient_checkpointing,
            "matmul_params": matmul_params(model), "eval_loss": validation_loss(model, tok, vrows), **peak_memory_mb()}


def main(argv: list[str]) -> None:
    ap = arm_parser(__doc__, ARMS)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per arm (effective batch 4)")
    ap.add_argument("--eval-rows", type=int, default=40, help="validation rows for the loss after training")
    args = ap.parse_args(argv)
    if args.arm:
        args.result.write_text(json.dumps(arm(args)))
        return

    peak = matmul_peak_gflops()
    common = ["--base", str(args.base), "--data", str(args.data), "--params", str(args.params),
              "--steps", str(args.steps), "--eval-rows", str(args.eval_rows)]
    res = {a: run_arm(__spec__.name, ["--arm", a, *common]) for a in ARMS}
    for r in res.values():
        r["s_per_step"] = r["seconds"] / r["steps"]
        r["tokens_per_s"] = r["real_tokens"] / r["seconds"]
        # LoRA on a frozen base: forward 2P + backward to activations 2P FLOPs per token (+2P recompute
        # with checkpointing, not counted: it is overhead, not useful work)
        r["mfu"] = 4 * r["matmul_params"] * r["tokens_per_s"] / (peak * 1e9)
    b, o = res["baseline"], res["ours"]
    mem = "peak_gpu_mb" if "peak_gpu_mb" in b else "peak_rss_mb"
    rows = [
        ("batch x grad-accum", b["batch"], o["batch"], ""),
        ("gradient checkpointing", b["checkpointing"], o["checkpointing"], ""),
        ("rows trained", b["rows"], o["rows"], ""),
        ("real tokens trained", b["real_tokens"], o["real_tokens"], f"{o['real_tokens'] / b['real_tokens']:.2f}"),
        ("padding fraction", f"{b['padding_fraction']:.3f}", f"{o['padding_fraction']:.3f}", ""),
        ("time per optimizer step (s)", f"{b['s_per_step']:.2f}", f"{o['s_per_step']:.2f}",
         f"{b['s_per_step'] / o['s_per_step']:.2f}x faster"),
        ("real tokens / s", f"{b['tokens_per_s']:.1f}", f"{o['tokens_per_s']:.1f}",
         f"**{o['tokens_per_s'] / b['tokens_per_s']:.2f}x**"),
        ("model FLOP utilisation", f"{100 * b['mfu']:.1f}%", f"{100 * o['mfu']:.1f}%", ""),
        (mem.replace("_", " "), b[mem], o[mem], f"{o[mem] / b[mem]:.2f}"),
        ("validation loss on summaries", f"{b['eval_loss']:.4f}", f"{o['eval_loss']:.4f}",
         f"{o['eval_loss'] - b['eval_loss']:+.4f}"),
    ]
    print(f"\nmachine: {machine()}; matmul peak {peak:.0f} GFLOP/s; {args.steps} optimizer steps per arm")
    print(table(rows, ("training", "baseline (tutorial)", "ours", "ours / baseline")))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "matmul_peak_gflops": peak, **res}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
