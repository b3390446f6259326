"""Generate summaries of the test dialogues with the base model, or base + adapter.

    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/base.jsonl
    python -m stages.generate data/formatted/test.jsonl models/base data/predictions/finetuned.jsonl --adapter models/adapter

With an adapter, the prompt template saved beside it is used (the one it was trained with).
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
    ap.add_argument("--adapter", type=Path, default=None)
    args = ap.parse_args(argv)
    params = load_params()
    cli.offline()
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer

    gp = params.generate
    records = load_records(args.test_file)[:gp.num_dialogues]
    template = PromptTemplate.load(args.adapter) if args.adapter else DEFAULT
    model, tok = load_model_and_tokenizer(args.base_dir, params.model, args.adapter)
    start = time.perf_counter()
    preds = generate_summaries(model, tok, template, [r["dialogue"] for r in records], gp.batch_size,
                               gp.max_new_tokens, progress=lambda done, n: print(f"  {done}/{n}", flush=True))
    elapsed = time.perf_counter() - start
    atomic.write_jsonl(args.out_file, [{"id": r["id"], "dialogue": r["dialogue"], "references": r["references"],
                                        "prediction": p} for r, p in zip(records, preds)])
    print(f"{len(preds)} summaries in {elapsed:.1f} s ({len(preds) / elapsed:.2f}/s) -> {args.out_file}")


if __name__ == "__main__":
    cli.run(main)
