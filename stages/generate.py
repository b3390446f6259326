"""Generate summaries of the test dialogues with the base model, or base + adapter.

    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/base.jsonl
    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/base_chat.jsonl --chat
    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/finetuned.jsonl --adapter models/adapter

Default: the training prompt (with an adapter, the template saved beside it). ``--chat``: the
zero-shot baseline, a plain instruction through the tokenizer's chat template; a tokenizer
without one gets an empty output file (evaluate then skips that baseline).
Output JSONL: id, dialogue, references, prediction.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sumlora import atomic, cli
from sumlora.data import load_records
from sumlora.params import load_params
from sumlora.prompt import DEFAULT, PromptTemplate


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("test_file", type=Path)
    ap.add_argument("base_dir", type=Path)
    ap.add_argument("out_file", type=Path)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--adapter", type=Path, default=None, help="LoRA adapter directory")
    mode.add_argument("--chat", action="store_true", help="zero-shot through the chat template")
    args = ap.parse_args(argv)
    params = load_params()
    cli.offline()
    from sumlora.generation import generate_chat_summaries, generate_summaries
    from sumlora.modeling import load_model_and_tokenizer

    gp = params.generate
    records = load_records(args.test_file)[:gp.num_dialogues]
    model, tok = load_model_and_tokenizer(args.base_dir, params.model, args.adapter)
    dialogues = [r["dialogue"] for r in records]
    progress = lambda done, n: print(f"  {done}/{n}", flush=True)  # noqa: E731
    start = time.perf_counter()
    if args.chat and not getattr(tok, "chat_template", None):
        print("the tokenizer has no chat template: no zero-shot chat baseline")
        records, preds = [], []
    elif args.chat:
        preds = generate_chat_summaries(model, tok, dialogues, gp.batch_size, gp.max_new_tokens, progress)
    else:
        template = PromptTemplate.load(args.adapter) if args.adapter else DEFAULT
        preds = generate_summaries(model, tok, template, dialogues, gp.batch_size, gp.max_new_tokens, progress)
    elapsed = time.perf_counter() - start
    atomic.write_jsonl(args.out_file, [{"id": r["id"], "dialogue": r["dialogue"], "references": r["references"],
                                        "prediction": p} for r, p in zip(records, preds)])
    print(f"{len(preds)} summaries in {elapsed:.1f} s -> {args.out_file}")


if __name__ == "__main__":
    cli.run(main)
