"""Score the predictions with ROUGE and write metrics, a per-example table, a report and plots.

    python -m stages.evaluate data/predictions metrics/train.json metrics/rouge.json metrics/headline.json \
        reports plots/evaluation

Reads base.jsonl, base_chat.jsonl (may be empty: no chat template) and finetuned.jsonl from
the predictions directory, and the train stage's metrics (for the validation loss). Writes
metrics/rouge.json (every score); metrics/headline.json (the few numbers `dvc metrics show/diff`
compare); reports/examples.csv (one row per dialogue, biggest fine-tuning wins first, losses last) and
reports/evaluation.md; and
plots/evaluation/rouge.csv (for `dvc plots show`) and rouge.png.
"""

from __future__ import annotations

import csv
import io
import json

from sumlora.core import atomic, cli
from sumlora.core.errors import DataError
from sumlora.core.params import load_params
from sumlora.data import load_records
from sumlora.evaluation.report import markdown_report, rouge_bars
from sumlora.evaluation.rouge import ROUGE_TYPES
from sumlora.evaluation.scores import SCORINGS, evaluate, headline

SYSTEMS = ("base", "base_chat", "finetuned")


def parser():
    ap = cli.path_parser("stages.evaluate", __doc__, "in:predictions_dir", "in:train_metrics", "file:metrics",
                         "file:headline", "dir:reports_dir", "dir:plots_dir")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    runs = {name: load_records(args.predictions_dir / f"{name}.jsonl") for name in SYSTEMS}
    if not runs["base_chat"]:
        del runs["base_chat"]  # the tokenizer has no chat template
    ids = [r["id"] for r in runs["base"]]
    for name, rows in runs.items():
        if [r["id"] for r in rows] != ids:
            raise DataError(f"{args.predictions_dir / (name + '.jsonl')}: covers other dialogues than base.jsonl")
    if not ids:
        raise DataError(f"{args.predictions_dir / 'base.jsonl'}: no predictions")
    ep = params.evaluate
    metrics, rows = evaluate(ids, [r["references"] for r in runs["base"]],
                             {n: [r["prediction"] for r in rows] for n, rows in runs.items()},
                             ep.bootstrap_samples, ep.confidence, params.seed)
    metrics = {"split": params.generate.split, **metrics}  # validation while choosing params, test once chosen
    dialogues = {r["id"]: r["dialogue"] for r in runs["base"]}

    atomic.ensure_dir(args.reports_dir)
    atomic.ensure_dir(args.plots_dir)
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(args.reports_dir / "examples.csv", buf.getvalue())
    atomic.write_text(args.reports_dir / "evaluation.md", markdown_report(metrics, rows, dialogues,
                                                                          ep.report_examples))
    bars = ["label,system,rouge,score"] + [f"{t} {n},{n},{t},{metrics[n]['all_refs'][t]}"
                                           for t in ROUGE_TYPES for n in runs]
    atomic.write_text(args.plots_dir / "rouge.csv", "\n".join(bars) + "\n")
    rouge_bars(metrics, args.plots_dir / "rouge.png")
    atomic.write_json(args.metrics, metrics)
    atomic.write_json(args.headline, headline(metrics, json.loads(args.train_metrics.read_text())))

    for scoring in SCORINGS:
        print(f"[{scoring}]")
        for name in runs:
            print(f"  {name:>10}: " + "  ".join(f"{t} {metrics[name][scoring][t]:6.2f}" for t in ROUGE_TYPES))
        imp = metrics["improvement"][scoring]
        print(f"  {'gain':>10}: " + "  ".join(
            f"{t} {imp[t]['diff']:+.2f} [{imp[t]['ci_low']:+.2f}, {imp[t]['ci_high']:+.2f}]" for t in ROUGE_TYPES)
            + f"  (vs {metrics['baseline']})")


if __name__ == "__main__":
    cli.run_stage(main)
