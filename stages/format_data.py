"""Format DialogSum rows into prompt/response records.

    python -m stages.format_data data/raw/dialogsum data/formatted

Writes train/validation.jsonl ({id, dialogue, summary, prompt, response}) and test.jsonl
({id, dialogue, references, prompt}: the references of one dialogue grouped into one record).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sumlora import atomic, cli
from sumlora.data import SPLITS, group_references, read_jsonl
from sumlora.params import load_params
from sumlora.prompt import DEFAULT


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    params = load_params()
    cli.offline()
    limits = {"train": params.format.max_train_rows, "validation": params.format.max_validation_rows}
    splits = {s: read_jsonl(args.raw_dir / f"{s}.jsonl") for s in SPLITS}  # validate all before writing
    with atomic.output_dir(args.out_dir) as tmp:
        for split, rows in splits.items():
            if split == "test":
                records = [{**g, "prompt": DEFAULT.render_prompt(g["dialogue"])} for g in group_references(rows)]
            else:
                rows = rows[:limits[split]] if limits[split] else rows
                records = [{"id": r["id"], "dialogue": r["dialogue"], "summary": r["summary"],
                            "prompt": DEFAULT.render_prompt(r["dialogue"]),
                            "response": DEFAULT.render_response(r["summary"])} for r in rows]
            atomic.write_jsonl(tmp / f"{split}.jsonl", records)
            print(f"{split}: {len(records)} records")


if __name__ == "__main__":
    cli.run(main)
