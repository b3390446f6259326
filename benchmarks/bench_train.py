"""Training throughput: the tutorial's recipe, today's default, and what each speed lever buys and costs.

    python -m benchmarks.bench_train --base models/base --data ../shared/dialogsum --steps 12 --repeats 3 \
        --json benchmarks/results/train-cpu.json

Every arm QLoRA-trains the same 4-bit base with the same LoRA config for the same number of
optimizer steps at an effective batch of 4 rows, on the same rows, in a fresh process; the arms
run interleaved (A B C ... A B C ...), ``--repeats`` times, with the float32 and bfloat16 matmul
peaks measured before each.

- ``tutorial``: the tutorial's recipe: batch 1 x grad-accum 4, DataCollatorForLanguageModeling
  (loss on the whole text, pad = eos so EOS is masked out), gradient checkpointing, transformers'
  group_by_length sampler, the model's own loss; float32 compute on the 4-bit layers.
- ``default``: this pipeline's training before the levers below (params.yaml's batch, length grouping, loss on
  the summary with the LM head only where a label is), float32 compute, the 4-bit layers de-quantizing their
  weights at every forward and backward pass: ``model.compute_dtype: float32``, ``train.dequantize_base: false``,
  ``train.attention: sdpa``.
- ``+bf16``: ``model.compute_dtype: bfloat16`` (autocast; the 4-bit layers compute in bfloat16).
- ``+dequantized``: ``train.dequantize_base: true``, float32: the NF4 weights de-quantized once.
- ``+eager``: ``train.attention: eager`` (a matmul and a softmax per head) instead of PyTorch's fused SDPA.
- ``+cheap dropout``: LoRA's dropout drawn by :class:`sumlora.lora.CheapDropout` (a quarter of the random numbers;
  the same distribution, another random stream), as the train stage does; the other arms use torch's dropout. On a
  GPU CheapDropout is torch's dropout, so there this arm is the default again.
- ``+bf16+dequantized``: those two; ``+bf16+dequantized+cheap dropout``: ``auto``'s choices on a CPU with native
  bfloat16; ``+bf16+dequantized+cheap dropout+split passes``: what the train stage ran there with LoRA dropout, a
  batch wider than ``train.max_tokens_per_pass`` tokens run as passes of fewer rows (the other arms run one pass per
  batch);
  ``+bf16+dequantized+no dropout+split passes``: what it runs with the default ``lora.dropout: 0.0`` (no dropout
  layer at all); ``...+compiled blocks``: that with ``train.compile_blocks: true``, the transformer blocks
  compiled by torch.compile (:func:`sumlora.lora.compile_block_modules`), the time counted including compiling
  them at the first pass, from an empty kernel cache as on a fresh machine; ``...+matmul attention``: with
  ``train.attention: matmul`` (:mod:`sumlora.attention`: a causal sequence of at most 512 tokens as batched matmuls,
  a longer one through SDPA), what ``auto`` picks on a CPU computing in bfloat16, alone and with compiled blocks.
  Every other arm trains with the tutorial's LoRA dropout of 0.05, whatever params.yaml says, so that the
  dropout levers compare the same thing.

``--rows first`` (the default) trains on the first rows the train stage feeds; ``--rows widest`` on its widest
batches (the most tokens with padding), widest first: where memory peaks, and where splitting acts.

Per run: seconds, real (non-padding) tokens/s, padding fraction, peak memory, the matmul weights (for the
fraction of the matmul peak: a step costs about 4 FLOP per weight per real token, forward plus the backward
through the frozen weights), and the loss on validation summaries after training. ``python -m
benchmarks.report`` makes the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

from benchmarks.common import arm_parser, device, load_rows, machine, peak_memory_mb, publish, run_interleaved
from sumlora.core import atomic, cli
from sumlora.core.errors import SumloraError

SETTINGS = {  # arm: (model.compute_dtype, train.dequantize_base, train.attention, LoRA dropout, split passes,
    #                train.compile_blocks)
    "tutorial": ("float32", False, "sdpa", "torch", False, False),
    "default": ("float32", False, "sdpa", "torch", False, False),
    "+bf16": ("bfloat16", False, "sdpa", "torch", False, False),
    "+dequantized": ("float32", True, "sdpa", "torch", False, False),
    "+eager": ("float32", False, "eager", "torch", False, False),
    "+cheap dropout": ("float32", False, "sdpa", "cheap", False, False),
    "+bf16+dequantized": ("bfloat16", True, "sdpa", "torch", False, False),
    "+bf16+dequantized+cheap dropout": ("bfloat16", True, "sdpa", "cheap", False, False),
    "+bf16+dequantized+cheap dropout+split passes": ("bfloat16", True, "sdpa", "cheap", True, False),
    "+bf16+dequantized+no dropout+split passes": ("bfloat16", True, "sdpa", "none", True, False),
    "+bf16+dequantized+no dropout+split passes+compiled blocks": ("bfloat16", True, "sdpa", "none", True, True),
    "+bf16+dequantized+no dropout+split passes+matmul attention": ("bfloat16", True, "matmul", "none", True, False),
    "+bf16+dequantized+no dropout+split passes+matmul attention+compiled blocks":
        ("bfloat16", True, "matmul", "none", True, True)}
TUTORIAL_DROPOUT = 0.05  # LoRA dropout of the tutorial's recipe, and of every arm but the two without dropout
ARMS = tuple(SETTINGS)


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


def validation_loss(model, tok, rows: list[dict], compute_dtype: str, batch_size: int = 4) -> float:
    """Mean next-token loss on the summary + end marker + EOS tokens of ``rows`` (the task), with the autocast the
    Trainer evaluates with (bfloat16 compute)."""
    import torch

    from sumlora.prompt import DEFAULT
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator
    from sumlora.training.trainer import summary_loss

    collate, total, count = PadCollator(tok.pad_token_id), 0.0, 0
    model.eval()
    dev = next(model.parameters()).device
    bf16 = compute_dtype == "bfloat16"
    # compiled blocks run uncompiled here, as in the train stage's validation passes
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16), \
            torch.compiler.set_stance("force_eager"):
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
    from sumlora.lora import dequantize_base, prepare_qlora_model
    from sumlora.prompt import DEFAULT
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator, length_grouped_order
    from sumlora.training.trainer import trainer_class, training_arguments

    params = load_params(args.params)
    dtype, dequantize, attention, dropout, split, compiled = SETTINGS[args.arm]
    cheap_dropout = dropout == "cheap"
    params.lora.dropout = 0.0 if dropout == "none" else TUTORIAL_DROPOUT
    params.model.compute_dtype = dtype if device() == "cpu" else "bfloat16"
    params.train.dequantize_base, params.train.attention = dequantize, attention
    params.train.compile_blocks = compiled
    if compiled:  # compile from scratch, as a fresh clone does: not from kernels an earlier run left in torch's cache
        kernels = tempfile.TemporaryDirectory(prefix="bench-train-inductor-")  # removed when the arm's process ends
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = kernels.name
    tp = params.train
    stage_steps, stage_batch = tp.max_steps, tp.batch_size  # the train stage's run, whose order the rows come from
    tp.max_steps, tp.warmup_steps = args.steps, 0
    tutorial = args.arm == "tutorial"
    if tutorial:
        tp.batch_size, tp.gradient_accumulation_steps, tp.gradient_checkpointing = 1, 4, True
    model, tok = prepare_qlora_model(args.base, params, cheap_dropout=cheap_dropout)
    # the same rows in every arm, from the order the train stage feeds them (its length-grouped order of all rows):
    # the first 4 x steps, or its 4 x steps / batch_size widest batches
    every = [encode_example(tok, DEFAULT, r["dialogue"], r["summary"]) for r in load_rows(args.data, "train", None)]
    lengths = [len(e["input_ids"]) for e in every]
    widest = args.rows == "widest"
    order = length_grouped_order(lengths, stage_batch, (stage_steps if widest else args.steps) * 4, params.seed)
    if widest:
        batches = [order[k:k + stage_batch] for k in range(0, len(order), stage_batch)]
        batches.sort(key=lambda b: -len(b) * max(lengths[i] for i in b))  # stable: ties keep the stage's order
        order = [i for b in batches[:args.steps * 4 // stage_batch] for i in b]
    encoded = [every[i] for i in order]
    if tutorial:
        # whole text, labels = input ids; pad = eos, so the collator masks EOS out of the loss
        tok.pad_token = tok.eos_token
        ds = Dataset.from_list([{"input_ids": e["input_ids"]} for e in encoded])
        collator, trainer_cls = DataCollatorForLanguageModeling(tok, mlm=False), Trainer
    else:
        ds = Dataset.from_list([{**e, "row": i} for i, e in enumerate(encoded)])  # already in the stage's order
        collator, trainer_cls = PadCollator(tok.pad_token_id), trainer_class()

    class Counting(trainer_cls):
        """Counts the real and padded tokens of every pass trained on, and the passes."""
        real = padded = passes = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                mask = inputs["attention_mask"]
                Counting.real += int(mask.sum())
                Counting.padded += mask.numel()
                Counting.passes += 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as out:
        targs = dataclasses.replace(  # the stage's arguments, without evaluation and checkpoints
            training_arguments(tp, params.seed, params.model.compute_dtype, out), eval_strategy="no",
            save_strategy="no", logging_steps=args.steps, learning_rate=2.0e-4,
            # the tutorial groups by length with transformers' own sampler
            **({"train_sampling_strategy": "group_by_length"} if tutorial else {}))
        budget = {"max_tokens_per_pass": tp.max_tokens_per_pass} if split else {}
        trainer = Counting(model=model, args=targs, train_dataset=ds, data_collator=collator, **budget)
        if device() == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if device() == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    vrows = load_rows(args.data, "validation", args.eval_rows)
    return {"arm": args.arm, "compute_dtype": params.model.compute_dtype, "dequantized": dequantize_base(params),
            "attention": attention, "compiled_blocks": compiled, "cheap_dropout": cheap_dropout,
            "lora_dropout": params.lora.dropout,
            "max_tokens_per_pass": tp.max_tokens_per_pass if split else None, "passes": Counting.passes,
            "seconds": seconds, "steps": args.steps, "rows": len(ds), "real_tokens": Counting.real,
            "padding_fraction": round(1 - Counting.real / Counting.padded, 4), "tokens_per_s": Counting.real / seconds,
            "batch": f"{tp.batch_size} x {tp.gradient_accumulation_steps}",
            "checkpointing": tp.gradient_checkpointing, "matmul_params": matmul_params(model),
            "eval_loss": validation_loss(model, tok, vrows, params.model.compute_dtype), **peak_memory_mb()}


def parser():
    ap = arm_parser("benchmarks.bench_train", __doc__, ARMS)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per arm (effective batch 4)")
    ap.add_argument("--rows", choices=("first", "widest"), default="first",
                    help="train on the first rows the train stage feeds, or on its widest batches")
    ap.add_argument("--eval-rows", type=int, default=40, help="validation rows for the loss after training")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each arm, interleaved")
    ap.add_argument("--arms", type=lambda v: v.split(","), default=list(ARMS), metavar="A,B",
                    help="run only these arms, comma-separated (default is required: the ratios are to it)")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown or "default" not in args.arms:
        raise SumloraError(f"--arms: unknown {unknown} (known: {', '.join(ARMS)})" if unknown
                             else "--arms: must include default (every ratio is to it)")
    if args.rows == "widest":
        from sumlora.core.params import load_params

        stage_steps = load_params(args.params).train.max_steps
        if args.steps > stage_steps:  # the widest batches are picked among the stage's own
            raise SumloraError(f"--steps {args.steps} with --rows widest: the train stage runs {stage_steps} steps "
                               f"(train.max_steps in {args.params}), so it has no more batches to pick from")
    if args.arm:
        atomic.write_text(args.result, json.dumps(arm(args)))
        return

    common = ["--base", str(args.base), "--data", str(args.data), "--params", str(args.params),
              "--steps", str(args.steps), "--eval-rows", str(args.eval_rows), "--rows", args.rows]
    arms = tuple(a for a in ARMS if a in args.arms)
    runs = run_interleaved(__spec__.name, arms, common, args.repeats)
    result = {"benchmark": "train", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
              "row_selection": args.rows,
              "eval_rows": args.eval_rows, "repeats": args.repeats, "arms": list(arms), "runs": runs}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
