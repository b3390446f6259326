"""The validation loss during training: what one evaluation pass costs, by row order and batch size.

    python -m benchmarks.bench_eval --base models/base --adapter models/adapter --data ../shared/dialogsum \
        --rows 40 --repeats 3 --json benchmarks/results/eval-cpu.json

Each arm runs the train stage's own evaluation, ``Trainer.evaluate()`` of the pipeline's Trainer
(forward only, the loss per row), on the QLoRA model as training holds it (4-bit base, LoRA layers
holding the committed adapter's weights) and on the same ``--rows`` validation rows, in a fresh
process, after one warm-up pass; the arms run interleaved, ``--repeats`` times.

- ``file_order_bN``: the rows in the order the tokenize stage wrote them, batches of N (what the train
  stage did before it sorted them; N=2 was its default ``train.eval_batch_size``);
- ``shortest_first_bN``: the same rows sorted by length (:func:`sumlora.training.run.shortest_first`).

Per run: seconds of the pass, padding tokens, the loss (equal across arms up to rounding: the rows are the
same), peak memory. ``python -m benchmarks.report`` makes the table.
"""

from __future__ import annotations

import json
import time

from benchmarks.common import ROOT, arm_parser, load_rows, machine, peak_memory_mb, publish, run_interleaved
from sumlora.core import atomic, cli

ARMS = ("file_order_b2", "shortest_first_b2", "file_order_b1", "shortest_first_b4", "file_order_b8",
        "shortest_first_b8")


def arm(args) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import PrinterCallback

    from sumlora.core.params import load_params
    from sumlora.lora import prepare_qlora_model
    from sumlora.prompt import PromptTemplate
    from sumlora.tokenizing import encode_example
    from sumlora.training.batching import PadCollator
    from sumlora.training.run import shortest_first
    from sumlora.training.trainer import trainer_class, training_arguments

    order, batch = args.arm.rsplit("_b", 1)
    params = load_params(args.params)
    params.train.eval_batch_size = int(batch)
    # float32 on the 4-bit layers: the arithmetic of its committed results (training_arguments below says float32)
    params.model.compute_dtype, params.train.dequantize_base = "float32", False
    model, tok = prepare_qlora_model(args.base, params)
    set_peft_model_state_dict(model, load_file(str(args.adapter / "adapter_model.safetensors")))
    template = PromptTemplate.load(args.adapter)
    from datasets import Dataset

    rows = [encode_example(tok, template, r["dialogue"], r["summary"])
            for r in load_rows(args.data, "validation", args.rows)]
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    if order == "shortest_first":
        ds = shortest_first(ds)
    lengths = [len(x) for x in ds["input_ids"]]
    b = int(batch)
    padding = sum(max(lengths[i:i + b]) * len(lengths[i:i + b]) - sum(lengths[i:i + b])
                  for i in range(0, len(lengths), b))
    targs = training_arguments(params.train, params.seed, "float32", args.result.parent / "out")
    trainer = trainer_class()(model=model, args=targs, eval_dataset=ds, data_collator=PadCollator(tok.pad_token_id))
    trainer.remove_callback(PrinterCallback)
    trainer.evaluate(eval_dataset=ds.select(range(min(4, len(ds)))))  # warm-up: kernels, allocator
    start = time.perf_counter()
    loss = trainer.evaluate()["eval_loss"]
    return {"arm": args.arm, "order": order, "batch_size": b, "rows": len(ds), "seconds": time.perf_counter() - start,
            "padding_tokens": padding, "real_tokens": sum(lengths), "eval_loss": loss, **peak_memory_mb()}


def parser():
    ap = arm_parser("benchmarks.bench_eval", __doc__, ARMS)
    cli.input(ap, "--adapter", default=ROOT / "models/adapter")
    ap.add_argument("--rows", type=int, default=40, help="validation rows (train.max_eval_samples)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each arm, interleaved")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    if args.arm:
        atomic.write_text(args.result, json.dumps(arm(args)))
        return

    common = ["--base", str(args.base), "--adapter", str(args.adapter), "--data", str(args.data),
              "--params", str(args.params), "--rows", str(args.rows)]
    runs = run_interleaved(__spec__.name, ARMS, common, args.repeats)
    result = {"benchmark": "eval", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": args.rows,
              "repeats": args.repeats, "arms": list(ARMS), "runs": runs}
    publish(result, args.json)


if __name__ == "__main__":
    cli.run(main)
