"""Rank a sweep's experiments: a Markdown table and a PNG of the metric against each swept param.

    python -m sumlora.sweep_report                          # reads `dvc exp show --json` here
    python -m sumlora.sweep_report --metric rougeL --scoring all_refs --out sweep
    python -m sumlora.sweep_report --exp-show exp.json      # from a saved `dvc exp show --json`
    python -m sumlora.sweep_report --merge earlier.json     # plus the experiments of a saved one (another clone's)

Every experiment with ROUGE metrics is a row (the workspace row is left out; commits' own rows are kept, named
by their short hash: a branch name moves on, the commit does not), ranked by the fine-tuned model's ROUGE.
Swept params are those whose values differ between the rows. Each row shows the gain over the stronger
baseline with its paired bootstrap interval (``metrics/rouge.json``'s ``improvement``), the interval DVC's own
tables cannot show. Rows scored on different splits are not comparable: the split is a column, and the ranking
is per split (validation first). Writes ``OUT/sweep.md``, ``OUT/sweep.png``, ``OUT/exp_show.json`` (the `dvc
exp show --json` it read: the raw record) and ``OUT/seeds.json``: every group of two or more rows whose params
differ only in ``seed`` and that ran on the same code (the commit an experiment is based on), with each seed's
score (the seed spread the release stage's model card reports for the params it was trained with). Rows on
different code are different runs, never seeds of one: when a sweep spans several commits (``--rev``), the
code is a column and ``seeds.json`` lists the newest code's groups first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sumlora.core import atomic, cli
from sumlora.core.errors import SumloraError
from sumlora.core.params import NOT_CONFIG, Params, config_key, flatten
from sumlora.figures import pyplot, save_png

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SCORINGS = ("all_refs", "first_ref", "all_refs_tags_normalised")


DETAIL = ("metrics/rouge.json", "metrics/train.json")  # git-tracked outputs, not DVC metrics: read from each rev


def with_detail(exp_show: list) -> list:
    """``exp_show`` with each row's rouge.json and train.json put beside its metrics, read from the row's git commit
    (an experiment is one; skipped when the file is not there). The saved document then holds everything the
    report needs."""
    def show(rev: str, path: str):
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def fill(entry: dict) -> None:
        data = entry.get("data") or {}
        if not data.get("rev") or data["rev"] == "workspace":
            return
        if data.get("metrics") is None:
            data["metrics"] = {}
        metrics = data["metrics"]
        for path in DETAIL:
            if path not in metrics:
                found = show(data["rev"], path)
                if found is not None:
                    metrics[path] = {"data": found}

    for commit in exp_show:
        fill(commit)
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                fill(rev)
    return exp_show


def runs(exp_show: list) -> list[dict]:
    """One dict per experiment or commit of ``dvc exp show --json`` that has ROUGE metrics: name, rev, code (the
    commit it ran on: an experiment's baseline commit, a commit's own rev) and that commit's timestamp, flattened
    params (a param it does not record: its schema default), rouge.json and train.json."""
    found, defaults = [], flatten(Params())

    def add(entry: dict, name: str | None, commit: dict) -> None:
        data = entry.get("data") or {}
        rouge = ((data.get("metrics") or {}).get("metrics/rouge.json") or {}).get("data")
        if data.get("rev") == "workspace" or not rouge or entry.get("error"):
            return  # (a failed experiment shows its baseline's metrics)
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        train = ((data.get("metrics") or {}).get("metrics/train.json") or {}).get("data") or {}
        base = commit.get("data") or {}
        found.append({"name": name or data["rev"][:7], "rev": data["rev"], "code": base.get("rev") or data["rev"],
                      "code_time": base.get("timestamp") or "", "params": {**defaults, **flatten(params)},
                      "rouge": rouge, "train": train})

    for commit in exp_show:
        add(commit, None, commit)
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name"), commit)
    return found


def merged(documents: list[list]) -> list:
    """One ``dvc exp show --json`` document from several (e.g. a sweep run in another clone, whose experiment refs
    this one lacks, and the experiments run here): a commit listed in more than one is one entry holding the
    experiments of all of them, each experiment once (by its rev); the first document's entry of a commit is kept
    for the commit's own data."""
    out: list = []
    by_rev: dict[str, dict] = {}
    for doc in documents:
        for commit in doc:
            rev = (commit.get("data") or {}).get("rev") or commit.get("rev")
            if rev == "workspace":
                if not any(c.get("rev") == "workspace" for c in out):
                    out.append(commit)
                continue
            if rev not in by_rev:
                by_rev[rev] = {**commit, "experiments": list(commit.get("experiments") or [])}
                out.append(by_rev[rev])
                continue
            have = {(r.get("data") or {}).get("rev") for e in by_rev[rev]["experiments"] for r in e.get("revs") or []}
            by_rev[rev]["experiments"] += [e for e in commit.get("experiments") or []
                                           if not {(r.get("data") or {}).get("rev") for r in e.get("revs") or []}
                                           <= have]
    return out


def swept(rows: list[dict]) -> list[str]:
    """The params whose values differ between the rows (``generate.split`` aside: it is its own column; the
    release's params change no score)."""
    keys = sorted({k for r in rows for k in r["params"]})
    return [k for k in keys if k != "generate.split" and not k.startswith(NOT_CONFIG)
            and len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]


def seed_groups(rows: list[dict], scoring: str, metric: str) -> list[dict]:
    """Groups of rows with the same configuration, run on the same code, and two or more seeds: the params, the
    code (commit), the split, and each seed's fine-tuned score, its spread (max - min) and the experiments; the
    newest code's groups first."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["code_time"], reverse=True):  # stable: within one code, the given order
        groups.setdefault((config_key(r["params"]), r["code"]), []).append(r)
    out = []
    for (key, code), mine in groups.items():
        seeds = {r["params"].get("seed") for r in mine}
        if len(seeds) < 2 or len(seeds) < len(mine):  # one row per seed, two seeds at least
            continue
        scores = {str(r["params"]["seed"]): round(r["rouge"]["finetuned"][scoring][metric], 2) for r in mine}
        out.append({"params": json.loads(key), "code": code, "split": mine[0]["rouge"].get("split", "test"),
                    "num_dialogues": mine[0]["rouge"].get("num_dialogues"), "scoring": scoring, "metric": metric,
                    "scores": scores, "spread": round(max(scores.values()) - min(scores.values()), 2),
                    "experiments": [r["name"] for r in mine]})
    return out


def ranked(rows: list[dict], scoring: str, metric: str) -> list[dict]:
    """Validation rows first, then test, each ranked by the fine-tuned model's score, best first."""
    order = {"validation": 0, "test": 1}
    return sorted(rows, key=lambda r: (order.get(r["rouge"].get("split", "test"), 2),
                                       -r["rouge"]["finetuned"][scoring][metric]))


def markdown(rows: list[dict], scoring: str, metric: str) -> str:
    params = swept(rows)
    codes = len({r["code"] for r in rows}) > 1
    pct = int(round(rows[0]["rouge"]["confidence"] * 100)) if rows else 95
    head = (["rank", "experiment", *(["code"] if codes else []), "split", *params, f"fine-tuned {metric}",
             f"gain over baseline [{pct}% CI]", "baseline", "chosen step"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h.startswith(("rank", "fine", "gain", "chosen"))
                                                            else "---" for h in head) + "|"]
    rank, split = 0, None
    for r in ranked(rows, scoring, metric):
        rouge = r["rouge"]
        rank = 1 if rouge.get("split", "test") != split else rank + 1
        split = rouge.get("split", "test")
        imp = rouge["improvement"][scoring][metric]
        cells = [str(rank), r["name"], *([r["code"][:7]] if codes else []), split,
                 *(_cell(r["params"].get(k)) for k in params),
                 f"{rouge['finetuned'][scoring][metric]:.2f}",
                 f"{imp['diff']:+.2f} [{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}]",
                 rouge.get("baseline", ""), str(r["train"].get("chosen_step", r["train"].get("steps", "")))]
        lines.append("| " + " | ".join(cells) + " |")
    n = {r["rouge"].get("num_dialogues") for r in rows}
    note = (f"ROUGE F1 x100 ({scoring.replace('_', ' ')}), {'/'.join(str(x) for x in sorted(n))} dialogues per "
            "row; gain = fine-tuned minus the stronger baseline, paired bootstrap interval over the dialogues "
            "(it does not cover seed variation); ranked within each split."
            + (" Code: the commit a row ran on (rows on different code are different runs, not seeds of one)."
               if codes else ""))
    return f"# Sweep: {metric}\n\n{note}\n\n" + "\n".join(lines) + "\n"


def _cell(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v)


def figure(rows: list[dict], scoring: str, metric: str, path: Path) -> None:
    """The gain over the baseline (with its interval) against each swept param, one panel per param;
    validation and test rows in different colours."""
    params = swept(rows) or ["experiment"]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.2), squeeze=False)
    for ax, key in zip(axes[0], params):
        for split, color in (("validation", "tab:blue"), ("test", "tab:orange")):
            mine = [r for r in rows if r["rouge"].get("split", "test") == split]
            if not mine:
                continue
            xs = [_cell(r["params"].get(key)) if key != "experiment" else r["name"] for r in mine]
            imp = [r["rouge"]["improvement"][scoring][metric] for r in mine]
            ys = [i["diff"] for i in imp]
            err = [[i["diff"] - i["ci_low"] for i in imp], [i["ci_high"] - i["diff"] for i in imp]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=3, label=split)
        ax.set_xlabel(key)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} gain over baseline")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Sweep: fine-tuned minus baseline {metric} ({scoring.replace('_', ' ')}), with intervals",
                 fontsize=9)
    save_png(fig, path)
    plt.close(fig)


def read_exp_show(path: Path) -> list:
    """A saved ``dvc exp show --json``; a file that is not JSON (where it breaks) or not a list of commits is an
    error naming it."""
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SumloraError(f"{path}: line {e.lineno}, column {e.colno}: not JSON ({e.msg})") from None
    if not isinstance(doc, list):
        raise SumloraError(f"{path}: not a `dvc exp show --json` document (a list of commits)")
    return doc


def parser():
    ap = cli.parser("sumlora.sweep_report", __doc__)
    ap.add_argument("--metric", choices=ROUGE, default="rougeL")
    ap.add_argument("--scoring", choices=SCORINGS, default="all_refs")
    cli.input(ap, "--exp-show", help="a saved `dvc exp show --json` (default: run it here)")
    cli.input(ap, "--merge", action="append", default=[], metavar="FILE",
              help="also the commits and experiments of this saved `dvc exp show --json` (repeatable), e.g. a "
                   "sweep's exp_show.json from another clone, whose experiments this one does not have; "
                   "written into --out's exp_show.json with the rest")
    ap.add_argument("--rev", action="append", default=[], metavar="COMMIT",
                    help="show the experiments based on this commit too (dvc exp show --rev; repeatable), e.g. a "
                         "sweep queued before the last commits")
    cli.output(ap, "--out", kind="dir", default=Path("sweep"), tracked_ok=("sweep",),
               help="directory for sweep.md, sweep.png, exp_show.json and seeds.json (the committed sweep: sweep/)")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    if args.exp_show:
        text = json.dumps(read_exp_show(args.exp_show), indent=1)
    else:
        revs = [x for r in args.rev for x in ("--rev", r)]
        proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *revs], capture_output=True,
                              text=True)
        if proc.returncode:
            raise SumloraError(f"dvc exp show --json failed here: {proc.stderr.strip()[-500:]}")
        text = json.dumps(with_detail(json.loads(proc.stdout)), indent=1)
    if args.merge:
        documents = [json.loads(text), *(read_exp_show(path) for path in args.merge)]
        text = json.dumps(merged(documents), indent=1)
    rows = runs(json.loads(text))
    if not rows:
        raise SumloraError("no experiment or commit with metrics/rouge.json in `dvc exp show` (run some first)")
    report = markdown(rows, args.scoring, args.metric)
    with atomic.output_dir(args.out) as tmp:
        atomic.write_text(tmp / "sweep.md", report)
        figure(rows, args.scoring, args.metric, tmp / "sweep.png")
        atomic.write_text(tmp / "exp_show.json", text)
        atomic.write_json(tmp / "seeds.json", seed_groups(rows, args.scoring, args.metric))
    print(report + f"\nwritten: {args.out}/ (sweep.md, sweep.png, exp_show.json, seeds.json)")


if __name__ == "__main__":
    cli.run(main)
