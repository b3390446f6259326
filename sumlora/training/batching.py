"""The training rows, the order they are fed in (length grouping), and the padding collator."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from sumlora.core.params import TrainParams
from sumlora.tokenizing import IGNORE_INDEX


def load_split(path: Path):
    """A tokenized split as a ``datasets.Dataset`` of ``input_ids``, ``labels`` and ``row`` (its line number)."""
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no training rows (all dropped as over-length?)")
    return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"], "row": i}
                              for i, r in enumerate(rows)])


def length_grouped_order(lengths: list[int], batch_rows: int, rows_needed: int, seed: int,
                         window_batches: int = 16) -> list[int]:
    """The order in which training rows are fed, ``rows_needed`` long (epochs back to back).

    Each epoch is a fresh seeded shuffle, cut into windows of ``window_batches`` batches; each
    window is sorted by length and cut into batches, so a batch holds rows of similar length
    (little padding) while every batch still comes from a random part of the data; the
    batches of an epoch are then shuffled. Deterministic for a seed, so a resumed run skips
    exactly the batches it already trained on.
    """
    rng = random.Random(seed)
    n, order = len(lengths), []
    while len(order) < rows_needed:
        perm = list(range(n))
        rng.shuffle(perm)
        batches = []
        for w in range(0, n, window_batches * batch_rows):
            window = sorted(perm[w:w + window_batches * batch_rows], key=lambda i: (lengths[i], i))
            batches += [window[j:j + batch_rows] for j in range(0, len(window), batch_rows)]
        rng.shuffle(batches)
        order += [i for b in batches for i in b]
    return order[:rows_needed]


def grouped_by_length(train_ds, tp: TrainParams, seed: int, processes: int = 1):
    """``train_ds`` in :func:`length_grouped_order` for the whole run (unchanged if train.group_by_length is off)."""
    if not tp.group_by_length:
        return train_ds
    rows_needed = tp.max_steps * tp.batch_size * tp.gradient_accumulation_steps * processes
    return train_ds.select(length_grouped_order([len(x) for x in train_ds["input_ids"]], tp.batch_size,
                                                rows_needed, seed))


class PadCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with -100; builds the attention mask.

    Unlike DataCollatorForLanguageModeling it never masks by token id, so EOS (== pad for
    many tokenizers) stays in the loss.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            attention[i, :k] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        if all("row" in f for f in features):  # training rows carry their row number (for the statistics)
            batch["row"] = torch.tensor([f["row"] for f in features], dtype=torch.long)
        return batch


def split_rows(inputs: dict, max_tokens: int | None) -> list[dict]:
    """A right-padded batch (:class:`PadCollator`'s) as passes of whole rows, in row order,
    each cut to its own longest row and holding at most ``max_tokens`` tokens with its padding (a row longer than
    that alone); the whole batch when it fits, or with ``max_tokens`` None. Every tensor is split along its rows."""
    mask = inputs["attention_mask"]
    if max_tokens is None or mask.numel() <= max_tokens:
        return [inputs]
    lengths = mask.sum(dim=1)
    if not torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
        raise ValueError("split_rows needs right-padded rows (each attention mask ones, then zeros), "
                         "as PadCollator builds them")
    lengths = lengths.tolist()
    passes: list[list[int]] = [[]]
    for i, n in enumerate(lengths):
        rows = passes[-1]
        if rows and (len(rows) + 1) * max(n, *(lengths[j] for j in rows)) > max_tokens:
            passes.append(rows := [])
        rows.append(i)
    return [{k: v[rows[0]:rows[-1] + 1, :max(lengths[j] for j in rows)] if v.dim() == 2 else v[rows[0]:rows[-1] + 1]
             for k, v in inputs.items()} for rows in passes]
