"""Score base and fine-tuned predictions with ROUGE against all references of each dialogue.

    python -m stages.evaluate data/predictions/base.jsonl data/predictions/finetuned.jsonl metrics/rouge.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sumlora import atomic, cli
from sumlora.data import load_records
from sumlora.errors import DataError
from sumlora.rouge import ROUGE_TYPES, corpus_scores


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_predictions", type=Path)
    ap.add_argument("finetuned_predictions", type=Path)
    ap.add_argument("metrics", type=Path)
    args = ap.parse_args(argv)
    base, tuned = load_records(args.base_predictions), load_records(args.finetuned_predictions)
    if [r["id"] for r in base] != [r["id"] for r in tuned]:
        raise DataError(f"{args.base_predictions} and {args.finetuned_predictions} cover different dialogues")
    refs = [r["references"] for r in base]
    scores = {name: corpus_scores([r["prediction"] for r in rows], refs)
              for name, rows in (("base", base), ("finetuned", tuned))}
    scores["improvement"] = {t: round(scores["finetuned"][t] - scores["base"][t], 4) for t in ROUGE_TYPES}
    scores["num_dialogues"] = len(base)
    scores["scale"] = "F1 x100, best-matching reference per dialogue, mean over dialogues"
    atomic.write_json(args.metrics, scores)
    for name in ("base", "finetuned", "improvement"):
        print(f"{name:>12}: " + "  ".join(f"{t} {scores[name][t]:6.2f}" for t in ROUGE_TYPES))


if __name__ == "__main__":
    cli.run(main)
