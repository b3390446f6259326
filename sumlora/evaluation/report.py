"""What the evaluate stage shows people: the Markdown report and the ROUGE bar chart."""

from __future__ import annotations

from pathlib import Path

from sumlora.evaluation.rouge import ROUGE_TYPES
from sumlora.figures import pyplot, save_png

LABELS = {"base": "base (training prompt)", "base_chat": "base (chat template, zero-shot)",
          "finetuned": "fine-tuned (QLoRA)"}


def _inline(text: str) -> str:
    """A prediction on one Markdown line: line breaks shown as ' / ', nothing empty."""
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or "(empty)"


def markdown_report(metrics: dict, rows: list[dict], dialogues: dict[str, str], n_examples: int) -> str:
    """The evaluation report: headline tables, lengths, example dialogues, biggest wins and losses."""
    names = [n for n in ("base", "base_chat", "finetuned") if n in metrics]
    label = LABELS
    pct = int(round(metrics["confidence"] * 100))
    out = ["# Evaluation report", "",
           f"{metrics['num_dialogues']} {metrics.get('split', 'test')} dialogues. {metrics['scale']}.", "",
           f"Improvement = fine-tuned minus the stronger baseline, **{label[metrics['baseline']]}**, "
           f"with a paired bootstrap {pct}% interval ({metrics['bootstrap_samples']} resamples of the "
           f"dialogues). The interval covers which {metrics.get('split', 'test')} dialogues were drawn, not "
           "training randomness "
           "(another seed trains another adapter): an interval that excludes 0 says the gain of *this* "
           "adapter is unlikely to be an accident of the dialogues drawn.", ""]
    titles = {"all_refs": "Against all references", "first_ref": "Against the first reference",
              "all_refs_tags_normalised": "Against all references, speaker tags normalised"}
    for scoring, title in titles.items():
        out += [f"## {title}", "",
                "| ROUGE | " + " | ".join(label[n] for n in names) + f" | improvement [{pct}% CI] |",
                "|---|" + "---:|" * (len(names) + 1)]
        for t in ROUGE_TYPES:
            imp = metrics["improvement"][scoring][t]
            out.append(f"| {t} | " + " | ".join(f"{metrics[n][scoring][t]:.2f}" for n in names)
                       + f" | {imp['diff']:+.2f} [{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}] |")
        out.append("")
    out += ["## Summary length (mean words)", "", "| | words |", "|---|---:|"]
    out += [f"| {label[n]} | {metrics[n]['words']:.1f} |" for n in names]
    out += [f"| references (all) | {metrics['references']['words']:.1f} |", ""]
    by_id = {r["id"]: r for r in rows}
    sections = [("Examples (the first dialogues of the test file)", list(dialogues)[:n_examples]),
                ("Biggest wins of fine-tuning (ROUGE-L gain)", [r["id"] for r in rows[:3]]),
                ("Biggest losses of fine-tuning", [r["id"] for r in rows[::-1][:3]])]
    for title, ids in sections:
        out += [f"## {title}", ""]
        for id_ in ids:
            r = by_id[id_]
            out += [f"### {id_} (ROUGE-L gain {r['rougeL_gain']:+.1f})", "", "```", dialogues[id_].strip(), "```", ""]
            out += [f"- **{label[n]}** (ROUGE-L {r[f'rougeL_{n}']:.1f}): {_inline(r[n])}" for n in names]
            refs = [v for k, v in r.items() if k.startswith("reference_")]
            out += [f"- reference {k + 1}: {ref}" for k, ref in enumerate(refs)] + [""]
    return "\n".join(out)


def rouge_bars(metrics: dict, path: str | Path, scoring: str = "all_refs") -> None:
    """Grouped bars: ROUGE of each system."""
    plt = pyplot()
    names = [n for n in ("base", "base_chat", "finetuned") if n in metrics]
    label = {"base": "base (training prompt)", "base_chat": "base (chat, zero-shot)", "finetuned": "fine-tuned"}
    types = list(metrics[names[0]][scoring])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(types))]
        vals = [metrics[n][scoring][t] for t in types]
        bars = ax.bar(xs, vals, width, label=label[n])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("F1 x100")
    ax.set_title(f"ROUGE on {metrics['num_dialogues']} {metrics.get('split', 'test')} dialogues "
                 f"({scoring.replace('_', ' ')})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, Path(path))
    plt.close(fig)
