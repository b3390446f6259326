"""Training throughput: the tutorial's recipe, and what each of this pipeline's levers buys and costs.

    python -m benchmarks.bench_train --base models/base --data ../shared/dialogsum --steps 10 --repeats 3 \
        --json benchmarks/results/train-cpu.json

Every arm QLoRA-trains the same 4-bit base with the same LoRA config for the same number of
optimizer steps at an effective batch of 4 rows, on the same rows, in a fresh process; the arms
run interleaved (A B C ... A B C ...), ``--repeats`` times, with the matmul peak measured before each.

- ``tutorial``: the tutorial's recipe: batch 1 x grad-accum 4, DataCollatorForLanguageModeling
  (loss on the whole text, pad = eos so EOS is masked out), gradient checkpointing, transformers'
  group_by_length sampler, the model's own loss.
- ``baseline``: this pipeline's data (loss on the summary, end marker and EOS) with every lever
  off: batch 1 x 4, gradient checkpointing, the LM head over every position, the padding mask
  passed to attention, rows in random order.
- ``+batch`` (2 x 2), ``+no_checkpointing``, ``+head_on_labels`` (the LM head only where a label
  is), ``+mask_free`` (no padding mask with right padding: plain causal attention),
  ``+length_grouping`` (batches of similar-length rows): the baseline with that one lever on.
- ``ours``: every lever on, as params.yaml's train section runs (batch 2 x 2 by default).

Per run: seconds, real (non-padding) tokens/s, padding fraction, peak memory, and the loss on
validation summaries after training. ``python -m benchmarks.report`` makes the table.
"""

from __future__ import annotations

import json
import tempfile
import time

from benchmarks.common import arm_parser, device, load_rows, machine, peak_memory_mb, publish, run_interleaved
from sumlora.core import atomic, cli

LEVERS = ("batch", "no_checkpointing", "head_on_labels", "mask_free", "length_grouping")
ARMS = ("tutorial", "baseline", *(f"+{lever}" for lever in LEVERS), "ours")


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


def levers(arm_name: str) -> set[str]:
    """The levers an arm turns on (the tutorial arm is a recipe of its own, not a lever set)."""
    if arm_name == "ours":
        return set(LEVERS)
    return {arm_name[1:]} if arm_name.startswith("+") else set()


def arm(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer

    from sumlora.core.device import resolve_compute_dtype
    from sumlora.core.params import load_params
    from sumlora.lora import prepare_qlora_model
    from sumlora.prompt import DEFAULT
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator, grouped_by_length
    from sumlora.training.trainer import summary_loss, trainer_class, training_arguments

    params = load_params(args.params)
    params.model.compute_dtype = resolve_compute_dtype("auto")  # bf16 on GPUs that have it natively, fp16 on older
    tp = params.train
    tp.max_steps, tp.warmup_steps = args.steps, 0
    on = levers(args.arm)
    if "batch" not in on:
        tp.batch_size, tp.gradient_accumulation_steps = 1, 4
    tp.gradient_checkpointing = "no_checkpointing" not in on
    tp.group_by_length = "length_grouping" in on
    effective = tp.batch_size * tp.gradient_accumulation_steps
    train_rows = load_rows(args.data, "train", args.steps * effective)  # the same rows in every arm
    model, tok = prepare_qlora_model(args.base, params)
    encoded = [encode_example(tok, DEFAULT, r["dialogue"], r["summary"]) for r in train_rows]
    tutorial = args.arm == "tutorial"
    if tutorial:
        # whole text, labels = input ids; pad = eos, so the collator masks EOS out of the loss
        tok.pad_token = tok.eos_token
        ds = Dataset.from_list([{"input_ids": e["input_ids"]} for e in encoded])
        collator, trainer_cls = DataCollatorForLanguageModeling(tok, mlm=False), Trainer
    else:
        ds = Dataset.from_list([{**e, "row": i} for i, e in enumerate(encoded)])
        ds = grouped_by_length(ds, tp, params.seed)  # unchanged unless length_grouping is on
        collator, trainer_cls = PadCollator(tok.pad_token_id), trainer_class()

    class Counting(trainer_cls):
        """Counts the real and padded tokens of every batch trained on; the loss with this arm's levers."""
        real = padded = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                mask = inputs["attention_mask"]
                Counting.real += int(mask.sum())
                Counting.padded += mask.numel()
            if tutorial:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = {k: v for k, v in inputs.items() if k != "row"}
            loss, outputs = summary_loss(model, inputs, num_items_in_batch, head_on_labels="head_on_labels" in on,
                                         mask_free="mask_free" in on)
            return (loss, outputs) if return_outputs else loss

    with tempfile.TemporaryDirectory() as out:
        # the tutorial groups by length with transformers' own sampler
        sampling = {"train_sampling_strategy": "group_by_length"} if tutorial else {}
        targs = training_arguments(tp, params.seed, params.model.compute_dtype, out, eval_strategy="no",
                                   save_strategy="no", logging_steps=args.steps, learning_rate=2.0e-4, **sampling)
        trainer = Counting(model=model, args=targs, train_dataset=ds, data_collator=collator)
        if device() == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if device() == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    vrows = load_rows(args.data, "validation", args.eval_rows)
    return {"arm": args.arm, "levers": sorted(on), "seconds": seconds, "steps": args.steps, "rows": len(ds),
            "real_tokens": Counting.real, "padding_fraction": round(1 - Counting.real / Counting.padded, 4),
            "tokens_per_s": Counting.real / seconds, "batch": f"{tp.batch_size} x {tp.gradient_accumulation_steps}",
            "checkpointing": tp.gradient_checkpointing, "matmul_params": matmul_params(model),
            "eval_loss": validation_loss(model, tok, vrows), **peak_memory_mb()}


def parser():
    ap = arm_parser("benchmarks.bench_train", __doc__, ARMS)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per arm (effective batch 4)")
    ap.add_argument("--eval-rows", type=int, default=40, help="validation rows for the loss after training")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each arm, interleaved")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    if args.arm:
        atomic.write_text(args.result, json.dumps(arm(args)))
        return

    common = ["--base", str(args.base), "--data", str(args.data), "--params", str(args.params),
              "--steps", str(args.steps), "--eval-rows", str(args.eval_rows)]
    runs = run_interleaved(__spec__.name, ARMS, common, args.repeats)
    result = {"benchmark": "train", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
              "repeats": args.repeats, "arms": list(ARMS), "levers": list(LEVERS), "runs": runs}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
