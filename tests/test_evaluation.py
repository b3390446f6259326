"""Evaluation: both scorings, paired bootstrap intervals, lengths, per-example rows, report."""

import numpy as np
import pytest

from sumlora.evaluation.report import markdown_report
from sumlora.evaluation.scores import evaluate, paired_bootstrap

REFS = [["the cat sat on the mat", "a cat was sitting"], ["dogs bark at night", "the dog barked"],
        ["they buy a car", "a car is bought"], ["she calls her mother", "a phone call home"]]
IDS = ["d0", "d1", "d2", "d3"]


def test_bootstrap_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 2)) * 10, rng.random((50, 2)) * 10 + 3
    r1 = paired_bootstrap(a, b, 500, 0.95, seed=1)
    assert r1 == paired_bootstrap(a, b, 500, 0.95, seed=1)
    assert r1 != paired_bootstrap(a, b, 500, 0.95, seed=2)
    for j, r in enumerate(r1):
        assert r["diff"] == pytest.approx((b - a)[:, j].mean(), abs=1e-4)
        assert r["ci_low"] < r["diff"] < r["ci_high"]
        assert r["ci_low"] > 0  # a +3 shift on 50 pairs is not chance
    # identical systems: zero difference, zero-width interval
    same = paired_bootstrap(a, a, 200, 0.95, seed=0)
    assert all(r == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0} for r in same)
    # a difference that changes sign between dialogues: the interval includes 0
    noisy = paired_bootstrap(np.array([[0.0], [10.0]] * 10), np.array([[10.0], [0.0]] * 10), 500, 0.95, seed=0)
    assert noisy[0]["ci_low"] < 0 < noisy[0]["ci_high"]


def test_two_scorings_lengths_and_stronger_baseline():
    systems = {"base": ["hello world"] * 4,
               "base_chat": ["a cat sat", "the dog barks", "a car", "she calls"],
               "finetuned": ["the cat sat on the mat", "the dog barked", "they buy a car", "a phone call home"]}
    m, rows = evaluate(IDS, REFS, systems, samples=200, confidence=0.9, seed=0)
    assert m["num_dialogues"] == 4 and m["confidence"] == 0.9
    assert m["base"]["all_refs"]["rouge1"] == 0.0
    ft = m["finetuned"]
    # all refs: every fine-tuned summary matches one reference exactly
    assert ft["all_refs"] == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    # first ref only: d1 and d3 match their second reference, so first-ref scores are lower
    assert ft["first_ref"]["rouge1"] < 100.0
    assert m["finetuned"]["words"] == pytest.approx((6 + 3 + 4 + 4) / 4)
    assert m["references"]["words"] == pytest.approx(np.mean([len(r.split()) for refs in REFS for r in refs]))
    assert m["baseline"] == "base_chat"  # the stronger baseline is the headline comparison
    imp = m["improvement"]["all_refs"]["rougeL"]
    assert imp["diff"] == pytest.approx(100.0 - m["base_chat"]["all_refs"]["rougeL"], abs=1e-3)
    assert m["improvement_vs_base_prompt"]["all_refs"]["rougeL"]["diff"] == pytest.approx(100.0)
    # per-example rows: sorted by gain, biggest wins first
    gains = [r["rougeL_gain"] for r in rows]
    assert gains == sorted(gains, reverse=True)
    assert set(rows[0]) >= {"id", "reference_1", "reference_2", "base", "base_chat", "finetuned",
                            "rougeL_base", "rougeL_finetuned", "rougeL_gain"}


def test_same_predictions_same_numbers_and_report():
    systems = {"base": ["a cat", "dogs", "a car", "calls"], "finetuned": ["the cat sat", "dogs bark", "car", "x"]}
    m1, r1 = evaluate(IDS, REFS, systems, 300, 0.95, 0)
    m2, r2 = evaluate(IDS, REFS, systems, 300, 0.95, 0)
    assert m1 == m2 and r1 == r2 and m1["baseline"] == "base" and "base_chat" not in m1
    report = markdown_report(m1, r1, dict(zip(IDS, ["dialogue zero", "d one", "d two", "d three"])), 2)
    assert "| rougeL |" in report and "[95% CI]" in report and "dialogue zero" in report
    assert "Biggest wins" in report and "Biggest losses" in report
    assert "which test dialogues were drawn" in report and "validation" not in report
    validation = markdown_report({**m1, "split": "validation"}, r1, dict(zip(IDS, ["d0", "d1", "d2", "d3"])), 2)
    assert "4 validation dialogues." in validation and "which validation dialogues were drawn" in validation
    assert "test" not in validation.split("## ")[0]  # the header says nothing of a test split


def test_report_keeps_each_prediction_on_one_line():
    systems = {"base": ["### Output:\n\nline one\n\nline two", "", "a car", "calls"],
               "finetuned": ["the cat sat", "dogs bark", "car", "x"]}
    m, rows = evaluate(IDS, REFS, systems, 200, 0.95, 0)
    report = markdown_report(m, rows, dict(zip(IDS, ["d0", "d1", "d2", "d3"])), 4)
    assert "### Output: / line one / line two" in report
    assert "**base (training prompt)** (ROUGE-L 0.0): (empty)" in report


def test_speaker_tag_normalised_scoring_counts_content_not_tag_style():
    refs = [["#Person1# buys a car from #Person2#."], ["#Person2# calls #Person1#."]]
    systems = {"base": ["nothing", "nothing"],
               "finetuned": ["Person 1 buys a car from Person 2.", "#Person2# calls #Person1#."]}
    m, _ = evaluate(["a", "b"], refs, systems, samples=50, confidence=0.9, seed=0)
    assert m["finetuned"]["all_refs"]["rouge1"] < 100
    assert m["finetuned"]["all_refs_tags_normalised"]["rouge1"] == 100
    assert m["finetuned"]["all_refs_tags_normalised"]["rouge1"] - m["finetuned"]["all_refs"]["rouge1"] > 5
    assert "all_refs_tags_normalised" in m["improvement"]
