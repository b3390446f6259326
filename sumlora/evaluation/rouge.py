"""ROUGE with ``rouge_score`` (offline, stemmer on), scored against several references.

Per dialogue the best-matching reference (highest F1, per ROUGE type: ``score_multi``) counts; the
score is the mean over dialogues, x100. ``rougeLsum`` gets one sentence per line.
Deterministic: no sampling, no bootstrap here.
"""

from __future__ import annotations

import re

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"[.!?]+\s+")
# A period after these words (or after a single capital, an initial) does not end a sentence.
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "e.g", "i.e", "etc"})
_SPEAKER_TAG = re.compile(r"#?\bperson\s*#?\s*(\d+)\b(?:\s*#)?", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` for ROUGE-Lsum: split after . ! ? and whitespace, not after abbreviations
    ("Mr. Smith", "Dr.", "Mrs.") or initials ("J. Smith")."""
    text = text.strip()
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start:m.start()].split()
        word = before[-1] if before else ""
        if m.group().startswith(".") and (word.lower() in ABBREVIATIONS or re.fullmatch(r"[A-Z]", word)):
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _sentences_per_line(text: str) -> str:
    return "\n".join(split_sentences(text))


def normalise_speaker_tags(text: str) -> str:
    """``#Person1#``, ``Person 1``, ``person1``, ``#Person 1#`` -> ``#Person1#`` (DialogSum's style), so a score
    on normalised text counts the content, not the tag style."""
    return _SPEAKER_TAG.sub(lambda m: f"#Person{m.group(1)}#", text)


def make_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def example_scores(prediction: str, references: list[str], scorer=None) -> dict[str, float]:
    """F1 x100 of each ROUGE type for one prediction against its best-matching reference."""
    if not references:
        raise ValueError("a dialogue with no reference cannot be scored")
    scorer = scorer or make_scorer()
    best = scorer.score_multi([_sentences_per_line(r) for r in references], _sentences_per_line(prediction))
    return {t: best[t].fmeasure * 100 for t in ROUGE_TYPES}


def corpus_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean over dialogues of the per-dialogue best-reference F1, x100, rounded to 4 places."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("nothing to score")
    scorer = make_scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references):
        for t, v in example_scores(pred, refs, scorer).items():
            totals[t] += v
    return {t: round(totals[t] / len(predictions), 4) for t in ROUGE_TYPES}
