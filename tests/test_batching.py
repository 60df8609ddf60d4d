"""hql_ray.data.batching.token_budget_batches: padded-token budgets, every example once, length-grouped."""

from __future__ import annotations

import random

from hql_ray.data.batching import token_budget_batches


def lengths(n: int, seed: int = 0):
    rng = random.Random(seed)
    src = [rng.randint(20, 400) for _ in range(n)]
    return src, [max(5, s // 3 + rng.randint(-5, 5)) for s in src]


def padded(batch, src, tgt) -> int:
    return len(batch) * (max(src[i] for i in batch) + max(tgt[i] for i in batch))


def test_every_example_once_and_within_budget():
    src, tgt = lengths(1000)
    batches = token_budget_batches(src, tgt, max_tokens=4096, seed=3, megabatch=300)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(padded(b, src, tgt) <= 4096 for b in batches)
    # Greedy cuts: adding the next example of the sorted mega-batch would have broken the budget,
    # so batches are nearly full and there are few of them.
    real = sum(src) + sum(tgt)
    assert len(batches) <= 1.25 * real / 4096 + 4
    assert token_budget_batches(src, tgt, 4096, seed=3, megabatch=300) == batches  # deterministic


def test_long_example_gets_its_own_batch():
    batches = token_budget_batches([500, 10, 10], [100, 5, 5], max_tokens=200)
    assert sorted(map(sorted, batches)) == [[0], [1, 2]]


def test_length_grouping_keeps_padding_low():
    src, tgt = lengths(2000, seed=1)
    batches = token_budget_batches(src, tgt, max_tokens=8192)
    real = sum(src[i] + tgt[i] for b in batches for i in b)
    assert real / sum(padded(b, src, tgt) for b in batches) > 0.85
