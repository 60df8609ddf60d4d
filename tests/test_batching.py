"""hql_ray.data.batching.token_budget_batches: real-token budgets (train.batch_tokens), every example once,
length-grouped, the same number of batches every epoch; collate's pad_to_multiple."""

from __future__ import annotations

import random

import torch

from hql_ray.data.batching import collate, token_budget_batches


def lengths(n: int, seed: int = 0):
    rng = random.Random(seed)
    src = [rng.randint(20, 400) for _ in range(n)]
    return src, [max(5, s // 3 + rng.randint(-5, 5)) for s in src]


def real(batch, src, tgt) -> int:
    return sum(src[i] + tgt[i] for i in batch)


def padded(batch, src, tgt) -> int:
    return len(batch) * (max(src[i] for i in batch) + max(tgt[i] for i in batch))


def test_every_example_once_and_within_budget():
    src, tgt = lengths(1000)
    batches = token_budget_batches(src, tgt, max_tokens=4096, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(real(b, src, tgt) <= 4096 for b in batches)
    # Greedy cuts: adding the next example in length order would have broken the budget, so batches are
    # nearly full and there are few of them.
    assert len(batches) <= (sum(src) + sum(tgt)) / (4096 - 2 * 400) + 1
    assert token_budget_batches(src, tgt, 4096, seed=3) == batches  # deterministic


def test_every_epoch_has_the_same_number_of_batches():
    """node.batches_from_step indexes an epoch's batches by step: the count must not depend on the seed."""
    src, tgt = lengths(3000, seed=2)
    epochs = [token_budget_batches(src, tgt, 8192, seed=s) for s in range(5)]
    assert len({len(e) for e in epochs}) == 1
    assert len({tuple(map(tuple, e)) for e in epochs}) == 5  # but a new order (and mix of equals) each epoch
    assert sorted(map(len, epochs[0])) == sorted(map(len, epochs[1]))


def test_long_example_gets_its_own_batch():
    batches = token_budget_batches([500, 10, 10], [100, 5, 5], max_tokens=200)
    assert sorted(map(sorted, batches)) == [[0], [1, 2]]


def test_length_grouping_keeps_padding_low():
    src, tgt = lengths(2000, seed=1)
    batches = token_budget_batches(src, tgt, max_tokens=8192)
    assert sum(real(b, src, tgt) for b in batches) / sum(padded(b, src, tgt) for b in batches) > 0.9


def test_collate_pads_up_to_a_multiple():
    rows = [{"input_ids": [5, 6, 7], "labels": [8, 1]}, {"input_ids": [5] * 9, "labels": [1]}]
    plain = collate(rows, pad_id=0)
    assert plain["input_ids"].shape == (2, 9) and plain["labels"].shape == (2, 2)
    bucketed = collate(rows, pad_id=0, multiple=8)
    assert bucketed["input_ids"].shape == (2, 16) and bucketed["labels"].shape == (2, 8)
    assert torch.equal(bucketed["input_ids"][:, :9], plain["input_ids"])
    assert int(bucketed["attention_mask"].sum()) == 12 and int((bucketed["labels"] != -100).sum()) == 3
