"""The blocks of the docs that are generated, never typed: the headline results and the pipeline's drawing.

    python -m sumlora.docgen                           # print every block
    python -m sumlora.docgen --write README.md         # fill the marked blocks of a file (README.md or docs/)

A block lies between ``<!-- generated: NAME -->`` and ``<!-- generated: end -->``:
- ``results``: the headline table, from the committed ``metrics/rouge.json`` and ``metrics/train.json``;
- ``dag``: the stages and what feeds what, from ``dvc dag --mermaid``, with the params check that gates every
  stage drawn once instead of as an edge to each.
tests/test_docs.py checks that every block in the docs is what these give now.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from sumlora.core import atomic, cli
from sumlora.core.errors import SumloraError

END = "<!-- generated: end -->"
DOCS = ("README.md", "docs/pipeline.md")  # the files with generated blocks (git-tracked: named for the write policy)
GATE = "check_params"  # every stage depends on its output: drawn once, not as an edge to each
SYSTEMS = (("base", "base, training prompt"), ("base_chat", "base, chat template (zero-shot)"),
           ("finetuned", "**fine-tuned**"))
ROWS = (("all_refs", "rouge1", "ROUGE-1, best of all references"), ("all_refs", "rougeL", "ROUGE-L, best of all "
        "references"), ("first_ref", "rouge1", "ROUGE-1, first reference"), ("first_ref", "rougeL",
                                                                              "ROUGE-L, first reference"))


def table(metrics_dir: Path, timing_file: Path) -> str:
    """The Markdown table of ``metrics_dir``'s rouge.json and train.json, with the lines that say what it scored
    and where and how fast it trained (``timing_file``: the train stage's timing.json)."""
    rouge = json.loads((metrics_dir / "rouge.json").read_text())
    train = json.loads((metrics_dir / "train.json").read_text())
    timing = json.loads(timing_file.read_text())
    env = timing["environment"]
    systems = [(k, label) for k, label in SYSTEMS if k in rouge]
    pct = round(rouge["confidence"] * 100)
    lines = ["| ROUGE F1 x100 | " + " | ".join(label for _, label in systems)
             + f" | gain over the stronger baseline [{pct}% CI] |",
             "|---|" + "---:|" * (len(systems) + 1)]
    for scoring, metric, label in ROWS:
        imp = rouge["improvement"][scoring][metric]
        cells = [f"{rouge[k][scoring][metric]:.2f}" for k, _ in systems]
        cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {imp['diff']:+.2f} [{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}] |")
    lines += ["", f"The first {rouge['num_dialogues']} dialogues of the {rouge['split']} split; fine-tuned for "
              f"{train['steps']} steps on {train['train_rows']} rows ({train['trainable_params']:,} trainable of "
              f"{train['total_params']:,} parameters), validation loss {train['eval_loss']}; stronger baseline: "
              f"{dict(SYSTEMS)[rouge['baseline']].strip('*')}. From `metrics/rouge.json` and `metrics/train.json` "
              "(`python -m sumlora.docgen`).", "",
              f"Trained on {env['device'].upper() if env['device'] == 'cpu' else env['device']} "
              f"({env.get('cpu') or env.get('gpu') or 'unknown'}, native bfloat16: "
              f"{'yes' if env.get('native_bf16') else 'no'}) in {timing['compute_dtype']}: {timing['runtime_s']:.0f} s "
              f"for the training loop, {timing['real_tokens_per_s']:.0f} real tokens/s, peak memory "
              f"{timing['peak_rss_mb']:,} MiB (`plots/training/timing.json`)."]
    return "\n".join(lines)


def dag(mermaid: str) -> str:
    """A Mermaid drawing of ``dvc dag --mermaid``: stage names as nodes, the params check's edges folded into one
    note (it gates every stage), the always-changed model check kept."""
    names = dict(re.findall(r'\s*(node\d+)\["([^"]+)"\]', mermaid))
    edges = [(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", mermaid)]
    gated = sum(1 for a, _ in edges if a == GATE)
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"  {a.replace('/', '_').replace('.', '_')}[\"{a}\"] --> {b}" for a, b in sorted(edges) if a != GATE]
    lines += [f"  {GATE}{{{{\"{GATE}: params.yaml validated; gates all {gated} stages\"}}}}", "```"]
    return "\n".join(lines)


def blocks(metrics_dir: Path, timing_file: Path) -> dict[str, callable]:
    """Each generated block by name, as a function that computes it (only the blocks a file has are computed)."""
    def mermaid() -> str:
        proc = subprocess.run([sys.executable, "-m", "dvc", "dag", "--mermaid"], capture_output=True, text=True)
        if proc.returncode:
            raise SumloraError(f"dvc dag --mermaid failed: {proc.stderr.strip()[-300:]}")
        return dag(proc.stdout)

    return {"results": lambda: table(metrics_dir, timing_file), "dag": mermaid}


def fill(text: str, where: str, makers: dict) -> str:
    """``text`` with every marked block replaced by what its maker gives; an unknown block name is an error naming
    ``where``."""
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in makers:
            raise SumloraError(f"{where}: unknown generated block {name!r} (known: {', '.join(makers)})")
        return f"<!-- generated: {name} -->\n{makers[name]()}\n{END}"

    return re.sub(r"<!-- generated: (\w+) -->\n.*?" + re.escape(END), one, text, flags=re.S)


def parser():
    ap = cli.parser("sumlora.docgen", __doc__)
    cli.input(ap, "--metrics", default=Path("metrics"), help="the metrics directory (rouge.json, train.json)")
    cli.input(ap, "--timing", default=Path("plots/training/timing.json"), help="the train stage's timing.json")
    cli.output(ap, "--write", tracked_ok=DOCS, help="fill the marked blocks of this Markdown file")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    makers = blocks(args.metrics, args.timing)
    if not args.write:
        for name, make in makers.items():
            print(f"<!-- generated: {name} -->\n{make()}\n")
        return
    atomic.write_text(args.write, fill(args.write.read_text(), str(args.write), makers))


if __name__ == "__main__":
    cli.run(main)
