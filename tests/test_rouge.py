"""ROUGE on hand-computed cases, including several references."""

import pytest

from sumlora.rouge import corpus_scores, example_scores


def test_identical_and_disjoint():
    assert example_scores("the cat sat", ["the cat sat"]) == pytest.approx(
        {"rouge1": 100, "rouge2": 100, "rougeL": 100, "rougeLsum": 100})
    assert example_scores("dogs bark loudly", ["the cat sat"]) == pytest.approx(
        {"rouge1": 0, "rouge2": 0, "rougeL": 0, "rougeLsum": 0})


def test_hand_computed_partial_overlap():
    # unigrams: 2 of 3 shared -> P = R = 2/3 -> F1 = 66.67; bigrams: "the cat" of 2 -> 50
    s = example_scores("the cat sat", ["the cat ran"])
    assert s["rouge1"] == pytest.approx(200 / 3)
    assert s["rouge2"] == pytest.approx(50)
    assert s["rougeL"] == pytest.approx(200 / 3)
    # different lengths: pred 2 tokens, ref 4 tokens, 2 shared -> P 1, R 0.5 -> F1 2/3
    assert example_scores("cat sat", ["the cat sat down"])["rouge1"] == pytest.approx(200 / 3)


def test_stemmer_is_on():
    assert example_scores("he walks", ["he walked"])["rouge1"] == pytest.approx(100)


def test_best_matching_reference_counts():
    refs = ["completely different words here", "the cat sat"]
    assert example_scores("the cat sat", refs)["rouge1"] == pytest.approx(100)
    # the best reference is chosen per ROUGE type; order does not matter
    assert example_scores("the cat sat", refs[::-1]) == example_scores("the cat sat", refs)


def test_corpus_mean_over_dialogues():
    scores = corpus_scores(["the cat sat", "dogs bark"], [["the cat sat"], ["nothing shared"]])
    assert scores["rouge1"] == pytest.approx(50)
    multi = corpus_scores(["the cat sat", "dogs bark"], [["x y", "the cat ran"], ["dogs bark", "z"]])
    assert multi["rouge1"] == pytest.approx((200 / 3 + 100) / 2, abs=1e-4)


def test_rouge_lsum_uses_sentences():
    # LCS over the whole text would match "a b" only once; per-sentence union LCS matches both sentences
    pred, ref = "b c. a b.", "a b. b c."
    s = example_scores(pred, [ref])
    assert s["rougeLsum"] == pytest.approx(100)
    assert s["rougeL"] < 100


def test_errors():
    with pytest.raises(ValueError, match="no reference"):
        example_scores("x", [])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        corpus_scores(["a", "b"], [["a"]])
