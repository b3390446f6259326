"""Where a training step's time goes: torch.profiler over the train stage's own forward, loss, backward and
optimizer step, on the real base and data.

    python -m benchmarks.profile_train --base models/base --data ../shared/dialogsum --steps 6 \
        --json benchmarks/results/profile-train-cpu.json [--set model.compute_dtype=bfloat16 ...]

The model and optimizer are built as the train stage builds them (``sumlora.lora.prepare_qlora_model``, the
Trainer's optimizer from ``train.optim``), with params.yaml's values and any ``--set key=value`` overrides;
the batches are ``train.batch_size`` rows of the training split in length-grouped order, collated by the
stage's collator. After two warm-up steps, ``--steps`` optimizer steps (each ``gradient_accumulation_steps``
forward/backward passes) are profiled. Reported: wall seconds per phase (collate, forward, backward, optimizer),
and self CPU time per operator grouped into categories: 4-bit de-quantization, matmuls, attention, LoRA dropout
(its random numbers; CheapDropout's comparison and scaling count as element-wise), element-wise and the rest.
``python -m benchmarks.report`` makes the table.
"""

from __future__ import annotations

import dataclasses
import time

from benchmarks.common import arm_parser, load_rows, machine, peak_memory_mb, publish
from sumlora.core import cli

CATEGORIES = {  # operator name fragments -> category, first match wins (lower case)
    "4-bit de-quantization": ("dequantize", "bitsandbytes", "nf4", "4bit"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn"),
    "attention": ("scaled_dot_product", "attention", "softmax"),
    "dropout": ("dropout", "bernoulli", "random_", "randint"),  # torch's, and CheapDropout's random numbers
    "optimizer": ("optimizer", "adam", "8bit_blockwise"),
    "copies and casts": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous",
                         "aten::cat", "aten::empty", "aten::zeros", "aten::fill_"),
    "element-wise": ("aten::mul", "aten::add", "aten::div", "aten::sub", "aten::silu", "aten::pow", "aten::rsqrt",
                     "aten::mean", "aten::neg", "aten::exp", "aten::sum", "aten::where", "aten::cos", "aten::sin"),
}


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATEGORIES.items() if any(k in low for k in keys)), "other")


def parser():
    ap = arm_parser("benchmarks.profile_train", __doc__, ())
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps profiled (after 2 warm-up steps)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param (YAML value), e.g. model.compute_dtype=bfloat16")
    return ap


def main(argv: list[str]) -> None:
    import torch
    import yaml
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import Trainer

    from sumlora.core.device import resolve_compute_dtype
    from sumlora.core.params import parse_params
    from sumlora.core.validate import read_yaml
    from sumlora.lora import dequantize_base, prepare_qlora_model
    from sumlora.prompt import template_for
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator, length_grouped_order
    from sumlora.training.trainer import summary_loss, training_arguments

    args = cli.parse(parser(), argv)
    data = read_yaml(args.params)
    for pair in args.set:
        key, value = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    params = parse_params(data, str(args.params))
    params.model.compute_dtype = resolve_compute_dtype(params.model.compute_dtype)
    tp = params.train
    steps = args.steps + 2
    rows = load_rows(args.data, "train", None)
    model, tok = prepare_qlora_model(args.base, params)
    template = template_for(params.format.prompt)
    encoded = [encode_example(tok, template, r["dialogue"], r["summary"]) for r in rows]
    order = length_grouped_order([len(e["input_ids"]) for e in encoded], tp.batch_size,
                                 steps * tp.batch_size * tp.gradient_accumulation_steps, params.seed)
    collate = PadCollator(tok.pad_token_id)
    targs = dataclasses.replace(training_arguments(tp, params.seed, params.model.compute_dtype, "unused"),
                                eval_strategy="no")  # only the optimizer is wanted from it
    optimizer = Trainer(model=model, args=targs).create_optimizer()
    model.train()
    bf16 = params.model.compute_dtype == "bfloat16"
    phases = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    real = 0

    def step(k: int, timed: bool) -> None:
        nonlocal real
        for micro in range(tp.gradient_accumulation_steps):
            at = (k * tp.gradient_accumulation_steps + micro) * tp.batch_size
            t0 = time.perf_counter()
            with record_function("collate"):
                batch = collate([encoded[i] for i in order[at:at + tp.batch_size]])
                batch.pop("row", None)
            t1 = time.perf_counter()
            with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = summary_loss(model, batch)  # under the autocast the Trainer uses for bfloat16
            t2 = time.perf_counter()
            with record_function("backward"):
                (loss / tp.gradient_accumulation_steps).backward()
            t3 = time.perf_counter()
            if timed:
                phases["collate"] += t1 - t0
                phases["forward"] += t2 - t1
                phases["backward"] += t3 - t2
                real += int(batch["attention_mask"].sum())
        t4 = time.perf_counter()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tp.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if timed:
            phases["optimizer"] += time.perf_counter() - t4

    for k in range(2):
        step(k, False)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(2, steps):
            step(k, True)
    seconds = time.perf_counter() - start
    ops, cats = [], {}
    for e in prof.key_averages():
        if e.key in phases:
            continue
        self_ms = e.self_cpu_time_total / 1000
        cats[category(e.key)] = cats.get(category(e.key), 0.0) + self_ms
        ops.append({"op": e.key, "self_ms": round(self_ms, 1), "calls": e.count, "category": category(e.key)})
    ops.sort(key=lambda o: -o["self_ms"])
    result = {"benchmark": "profile_train", "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "overrides": args.set, "compute_dtype": params.model.compute_dtype,
              "load_in_4bit": params.model.load_in_4bit, "dequantized": dequantize_base(params), "steps": args.steps,
              "seconds": round(seconds, 2),
              "real_tokens": real, "tokens_per_s": round(real / seconds, 1),
              "phases_s": {k: round(v, 2) for k, v in phases.items()},
              "categories_ms": {k: round(v, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
              "top_ops": ops[:25], **peak_memory_mb()}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
