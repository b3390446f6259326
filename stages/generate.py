"""Generate summaries of the test (or validation) dialogues with the base model, or base + adapter.

    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/base.jsonl \
        data/predictions/base.json --template data/tokenized/prompt_template.json
    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/base_chat.jsonl \
        data/predictions/base_chat.json --chat
    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/finetuned.jsonl \
        data/predictions/finetuned.json --adapter models/adapter

``--template``: the base model with the training prompt (the template the tokenize stage
recorded). ``--adapter``: base + adapter, with the template saved beside the adapter.
``--chat``: the zero-shot baseline, a plain instruction through the tokenizer's chat template;
a tokenizer without one gets an empty output file (evaluate then skips that baseline).
The dialogues file is ``data/formatted/{generate.split}.jsonl``: test records carry their
references, a validation record its one summary, scored as its reference.
Output JSONL: id, dialogue, references, prediction. Beside it, the run record (JSON): how the summaries were
computed, with ``auto`` resolved: the weights (4-bit, or de-quantized to which dtype, adapter merged in), the
compute dtype, the decoding (greedy or beam search, its beams and length penalty), batch size and token cap. The
release stage reads the fine-tuned run's record instead of working these out again.

Under ``accelerate launch`` / torchrun each process summarizes its own share of the
dialogues; the main process gathers them and writes the file.
"""

from __future__ import annotations

import time

from sumlora.core import atomic, cli
from sumlora.core.params import load_params
from sumlora.data import load_records, scored_record
from sumlora.progress import Progress
from sumlora.prompt import PromptTemplate


def parser():
    ap = cli.path_parser("stages.generate", __doc__, "in:test_file", "in:base_dir", "file:out_file",
                         "file:run_file")
    mode = ap.add_mutually_exclusive_group(required=True)
    cli.input(ap, "--template", group=mode, help="prompt_template.json: the base model, training prompt")
    cli.input(ap, "--adapter", group=mode, help="LoRA adapter directory (its template beside it)")
    mode.add_argument("--chat", action="store_true", help="zero-shot through the chat template")
    return ap


def run_record(params, dequantize_to: str | None, args, dialogues: int) -> dict:
    """How the summaries were computed, ``auto`` choices resolved (the release reads the fine-tuned one)."""
    from sumlora.modeling import compute_dtype

    gp = params.generate
    return {"prompt": "chat" if args.chat else "adapter's template" if args.adapter else "training template",
            "adapter": args.adapter is not None, "dialogues": dialogues, "split": gp.split,
            "load_in_4bit": params.model.load_in_4bit,
            "compute_dtype": str(compute_dtype(params.model)).removeprefix("torch."),
            "dequantize_to": dequantize_to, "adapter_merged": bool(dequantize_to and args.adapter),
            "decoding": "beam search" if gp.num_beams > 1 else "greedy, continuous batching",
            "num_beams": gp.num_beams, "length_penalty": gp.length_penalty, "batch_size": gp.batch_size,
            "max_new_tokens": gp.max_new_tokens}


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    cli.offline()
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from sumlora.generation import generate_chat_summaries, generate_summaries
    from sumlora.modeling import load_model_and_tokenizer, model_max_positions, resolve_dequantize

    gp = params.generate
    for path in (args.out_file, args.run_file):  # before the model loads and the summaries are generated
        atomic.check_writable(path)
    state = PartialState(cpu=not torch.cuda.is_available())  # one process unless launched with several
    records = [scored_record(r) for r in load_records(args.test_file)[:gp.num_dialogues]]
    dequantize_to = resolve_dequantize(gp.dequantize, params.model)
    model, tok = load_model_and_tokenizer(args.base_dir, params.model, args.adapter, dequantize_to)
    print(f"weights: de-quantized once to {dequantize_to}" + (", adapter merged in" if args.adapter else "")
          if dequantize_to else "weights: as loaded" + (" (4-bit)" if params.model.load_in_4bit else ""))
    bar = None

    def progress(done: int, n: int) -> None:  # after each batch: summaries done of this process's n
        nonlocal bar
        bar = bar or Progress(n, "dialogue")
        bar.update(done - bar.done)
    start = time.perf_counter()
    fit = {"context": model_max_positions(model.config)}  # longer dialogues are refused, by id
    beams = {"num_beams": gp.num_beams, "length_penalty": gp.length_penalty}
    with state.split_between_processes(list(range(len(records)))) as mine:
        dialogues = [records[i]["dialogue"] for i in mine]
        fit["ids"] = [f"{args.test_file}: {records[i]['id']}" for i in mine]
        if args.chat and not getattr(tok, "chat_template", None):
            preds = None
        elif args.chat:
            preds = generate_chat_summaries(model, tok, dialogues, gp.batch_size, gp.max_new_tokens, progress, **fit,
                                            **beams)
        else:
            template = PromptTemplate.load(args.adapter or args.template)
            preds = generate_summaries(model, tok, template, dialogues, gp.batch_size, gp.max_new_tokens, progress,
                                       **fit, **beams)
        gathered = gather_object([(i, p) for i, p in zip(mine, preds or [])])
    if not state.is_main_process:
        return
    if preds is None:
        print("the tokenizer has no chat template: no zero-shot chat baseline")
        records = []
    preds = [p for _, p in sorted(gathered)]
    elapsed = time.perf_counter() - start
    atomic.write_jsonl(args.out_file, [{"id": r["id"], "dialogue": r["dialogue"], "references": r["references"],
                                        "prediction": p} for r, p in zip(records, preds)])
    atomic.write_json(args.run_file, run_record(params, dequantize_to, args, len(records)))
    print(f"{len(preds)} summaries in {elapsed:.1f} s -> {args.out_file}"
          + (f" ({state.num_processes} processes)" if state.num_processes > 1 else "")
          + f"; peak memory {cli.peak_rss_mb()} MiB")


if __name__ == "__main__":
    cli.run_stage(main)
