"""The evaluate stage's numbers: ROUGE three ways, paired bootstrap intervals, lengths, per-example rows.

Everything is deterministic: the same predictions give byte-identical outputs (the bootstrap
is seeded, figures are rounded to 4 places).
"""

from __future__ import annotations

import numpy as np

from sumlora.evaluation.rouge import ROUGE_TYPES, example_scores, make_scorer, normalise_speaker_tags

SCORINGS = ("all_refs", "first_ref", "all_refs_tags_normalised")
SCALE = ("ROUGE F1 x100. all_refs: per dialogue the best-matching reference, then the mean over "
         "dialogues; first_ref: against the first reference only (the dataset authors' baseline setting); "
         "all_refs_tags_normalised: as all_refs, with speaker tags (#Person1#, Person 1, person1) written "
         "one way in predictions and references, so tag style does not count")


def _r(x: float) -> float:
    return round(float(x), 4)


def per_example(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """{scoring: array (n_dialogues, n_rouge_types)} of per-dialogue F1 x100."""
    scorer = make_scorer()
    out = {}
    for scoring in SCORINGS:
        rows = []
        for pred, refs in zip(predictions, references):
            if scoring == "all_refs_tags_normalised":
                pred, refs = normalise_speaker_tags(pred), [normalise_speaker_tags(r) for r in refs]
            s = example_scores(pred, refs[:1] if scoring == "first_ref" else refs, scorer)
            rows.append([s[t] for t in ROUGE_TYPES])
        out[scoring] = np.array(rows, dtype=np.float64).reshape(len(predictions), len(ROUGE_TYPES))
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int, confidence: float, seed: int) -> list[dict]:
    """Mean of b - a per column, with a percentile bootstrap interval over dialogues (paired, seeded)."""
    diffs = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(samples, len(diffs)))
    means = diffs[idx].mean(axis=1)  # (samples, n_types)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0, method="linear")
    return [{"diff": _r(diffs[:, j].mean()), "ci_low": _r(lo[j]), "ci_high": _r(hi[j])}
            for j in range(diffs.shape[1])]


def mean_words(texts: list[str]) -> float:
    return _r(np.mean([len(t.split()) for t in texts])) if texts else 0.0


def evaluate(ids: list[str], references: list[list[str]], systems: dict[str, list[str]],
             samples: int, confidence: float, seed: int) -> tuple[dict, list[dict]]:
    """Metrics dict and per-example rows for ``systems`` = {"base": [...], "base_chat": [...]?, "finetuned": [...]}.

    The headline improvement is fine-tuned minus the stronger baseline (by all-references ROUGE-L).
    """
    scores = {name: per_example(preds, references) for name, preds in systems.items()}
    metrics: dict = {"num_dialogues": len(ids), "scale": SCALE, "confidence": confidence,
                     "bootstrap_samples": samples}
    for name, preds in systems.items():
        metrics[name] = {scoring: {t: _r(scores[name][scoring][:, j].mean()) for j, t in enumerate(ROUGE_TYPES)}
                         for scoring in SCORINGS}
        metrics[name]["words"] = mean_words(preds)
    metrics["references"] = {"words": mean_words([r for refs in references for r in refs]),
                             "words_first": mean_words([refs[0] for refs in references])}
    baselines = [b for b in ("base", "base_chat") if b in systems]
    rl = ROUGE_TYPES.index("rougeL")
    strongest = max(baselines, key=lambda b: (scores[b]["all_refs"][:, rl].mean(), b == "base"))
    metrics["baseline"] = strongest
    for key, base in (("improvement", strongest), ("improvement_vs_base_prompt", "base")):
        metrics[key] = {scoring: dict(zip(ROUGE_TYPES, paired_bootstrap(
            scores[base][scoring], scores["finetuned"][scoring], samples, confidence, seed)))
            for scoring in SCORINGS}
    rows = []
    for i, id_ in enumerate(ids):
        row = {"id": id_}
        row.update({f"reference_{k + 1}": ref for k, ref in enumerate(references[i])})
        row.update({name: systems[name][i] for name in systems})
        row.update({f"rougeL_{name}": _r(scores[name]["all_refs"][i, rl]) for name in systems})
        row["rougeL_gain"] = _r(scores["finetuned"]["all_refs"][i, rl] - scores[strongest]["all_refs"][i, rl])
        rows.append(row)
    rows.sort(key=lambda r: (-r["rougeL_gain"], r["id"]))  # biggest wins first, biggest losses last
    return metrics, rows


def headline(metrics: dict, train: dict) -> dict:
    """The numbers a team diffs across runs (``metrics/headline.json``, the one DVC metrics file): the fine-tuned
    model's ROUGE-1/L against all references and the first, the stronger baseline's ROUGE-L (``baseline``), the
    fine-tuned model's ROUGE-L gain over it with its interval (all references), and the validation loss. Short
    flat keys and ROUGE rounded to 2 decimals, so that `dvc metrics show`, `dvc metrics diff` and `dvc exp show`
    stay narrow; the detail stays in rouge.json and train.json."""
    ft, imp = metrics["finetuned"], metrics["improvement"]["all_refs"]["rougeL"]
    values = {"rouge1": ft["all_refs"]["rouge1"], "rougeL": ft["all_refs"]["rougeL"],
              "rouge1_1st": ft["first_ref"]["rouge1"], "rougeL_1st": ft["first_ref"]["rougeL"],
              "baseline": metrics[metrics["baseline"]]["all_refs"]["rougeL"],
              "gain": imp["diff"], "ci_lo": imp["ci_low"], "ci_hi": imp["ci_high"]}
    return {**{k: round(v, 2) for k, v in values.items()}, "val_loss": round(train["eval_loss"], 4)}
