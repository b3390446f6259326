"""Length-grouped training order: every row once per epoch, similar lengths per batch, deterministic."""

import random

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
