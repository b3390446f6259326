"""Length-grouped training order: every row once per epoch, similar lengths per batch, deterministic."""

import random

import pytest

from sumlora.training.batching import length_grouped_order


def padding(order, lengths, batch):
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for i in order) / padded


def test_each_epoch_is_a_permutation_and_the_order_is_reproducible():
    lengths = [random.Random(1).randint(100, 900) for _ in range(103)]
    order = length_grouped_order(lengths, batch_rows=4, rows_needed=250, seed=7)
    assert len(order) == 250
    assert sorted(order[:103]) == list(range(103)) and sorted(order[103:206]) == list(range(103))
    assert order[:103] != order[103:206]  # a fresh shuffle each epoch
    assert order == length_grouped_order(lengths, 4, 250, seed=7)
    assert order != length_grouped_order(lengths, 4, 250, seed=8)


def test_batches_hold_similar_lengths_so_padding_drops():
    rng = random.Random(0)
    lengths = [rng.randint(100, 900) for _ in range(400)]
    grouped = length_grouped_order(lengths, batch_rows=2, rows_needed=400, seed=0)
    shuffled = list(range(400))
    rng.shuffle(shuffled)
    assert padding(grouped, lengths, 2) < padding(shuffled, lengths, 2) / 4
    # batches are not simply sorted over the whole epoch: long and short ones are interleaved
    firsts = [lengths[grouped[i]] for i in range(0, 400, 2)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_a_batch_wider_than_the_token_budget_splits_into_passes_of_whole_rows_cut_to_their_length():
    import torch

    from sumlora.training.batching import PadCollator, split_rows

    lengths = [5, 3, 4, 2, 6]
    batch = PadCollator(pad_id=0)([{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1)), "row": i}
                                   for i, n in enumerate(lengths)])
    assert split_rows(batch, None) == [batch] and split_rows(batch, 30) == [batch]  # 5 rows x 6 columns fit
    passes = split_rows(batch, 9)
    # rows in order, a pass taking the next row while (its rows x their longest) stays <= 9: 1x5, then 2x5 > 9;
    # 2x4; then 3x4 > 9; 1x2, then 2x6 > 9; 1x6
    assert [p["row"].tolist() for p in passes] == [[0], [1, 2], [3], [4]]
    assert [tuple(p["input_ids"].shape) for p in passes] == [(1, 5), (2, 4), (1, 2), (1, 6)]
    for p in passes:  # the same rows' tokens, labels and mask, only the padding columns past the pass's longest row
        rows = p["row"]
        width = p["input_ids"].shape[1]
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(p[key], batch[key][rows, :width])
            assert not batch["attention_mask"][rows, width:].any()
    assert sum(int(p["attention_mask"].sum()) for p in passes) == sum(lengths)
    # a left-padded batch would be cut through its tokens: it is refused, not split
    left = {k: v.flip(1) if v.dim() == 2 else v for k, v in batch.items()}
    with pytest.raises(ValueError, match="right-padded"):
        split_rows(left, 9)
