"""Validate DialogSum rows and split them into the records the later stages read.

    python -m stages.format_data data/raw/dialogsum data/formatted

Writes train/validation.jsonl ({id, dialogue, summary}) and test.jsonl ({id, dialogue,
references}: the references of one dialogue grouped into one record). Each dialogue is kept in
one place (whitespace-normalised text): repeated training dialogues, validation dialogues also
in train, and test dialogues also in train, validation or earlier in test are dropped;
counts.json says how many (the tokenize stage copies it into metrics/data.json). No prompt is
rendered here: the tokenize stage renders it and records the template it used.
"""

from __future__ import annotations

from collections import Counter

from sumlora.core import atomic, cli
from sumlora.core.params import load_params
from sumlora.data import SPLITS, drop_overlaps, group_references, read_jsonl

COUNTS = "counts.json"


def parser():
    ap = cli.path_parser("stages.format_data", __doc__, "in:raw_dir", "dir:out_dir")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    cli.offline()
    limits = {"train": params.format.max_train_rows, "validation": params.format.max_validation_rows}
    splits = {s: read_jsonl(args.raw_dir / f"{s}.jsonl") for s in SPLITS}  # validate all before writing
    train, validation, test, counts = drop_overlaps(splits["train"], splits["validation"],
                                                    group_references(splits["test"]))
    # dialogues with fewer references score lower against "all references": counted, not hidden
    counts["test_dialogues_by_reference_count"] = {str(k): n for k, n in sorted(Counter(
        len(g["references"]) for g in test).items())}
    train = train[:limits["train"]] if limits["train"] else train
    validation = validation[:limits["validation"]] if limits["validation"] else validation
    records = {split: [{"id": r["id"], "dialogue": r["dialogue"], "summary": r["summary"]} for r in rows]
               for split, rows in (("train", train), ("validation", validation))}
    records["test"] = test
    with atomic.output_dir(args.out_dir) as tmp:
        for split, rows in records.items():
            atomic.write_jsonl(tmp / f"{split}.jsonl", rows)
            print(f"{split}: {len(rows)} records")
        atomic.write_json(tmp / COUNTS, counts)
    print(f"dropped as repeats: {counts['train_repeats_dropped']} training, {counts['validation_repeats_dropped']} "
          f"validation and {counts['test_repeats_dropped']} test dialogues {counts['test_dropped_ids']}; "
          f"test dialogues by number of references: {counts['test_dialogues_by_reference_count']}")


if __name__ == "__main__":
    cli.run_stage(main)
