"""Batching and padding: pure Python + torch, no `datasets`, no corpus code.

Kept apart from `hql_ray.data.dataset` (which re-exports it) so that a bare GPU image with only torch
can import it too: `benchmarks/gpu_qlora.py` times our real batching, not a copy.
"""

from __future__ import annotations

import random

import torch


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int = 0, megabatch_mult: int = 50, group: bool = True
) -> list[list[int]]:
    """Batches of similar-length examples, in random order (HF's LengthGroupedSampler idea).

    Shuffle, cut into mega-batches of `batch_size * megabatch_mult`, sort each by length, cut into
    batches, then shuffle the batches: padding stays low while every epoch sees a new order.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mega = max(batch_size * megabatch_mult, batch_size)
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def worker_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This worker's rows of one optimizer step's batch (every worker sees the same global batches)."""
    return batch[rank::world_size] if world_size > 1 else batch


def micro_batches(rows: list[int], size: int | None) -> list[list[int]]:
    """`rows` cut into forward passes of at most `size` examples (gradient accumulation); None = one."""
    if not rows:
        return []
    if not size:
        return [rows]
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def real_token_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of real (non-pad) tokens when each batch is padded to its longest example."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return real / padded if padded else 1.0


def collate(rows: list[dict], pad_id: int, label_pad: int = -100) -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids/attention_mask with pad_id/0, labels with -100 (ignored by the loss)."""
    width = max(len(r["input_ids"]) for r in rows)
    target_width = max(len(r["labels"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), target_width), label_pad, dtype=torch.long)
    for i, r in enumerate(rows):
        n, m = len(r["input_ids"]), len(r["labels"])
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        attention[i, :n] = 1
        labels[i, :m] = torch.tensor(r["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def token_budget_batches(
    src_lengths: list[int], tgt_lengths: list[int], max_tokens: int, seed: int = 0, megabatch: int = 4096
) -> list[list[int]]:
    """Length-grouped batches holding at most `max_tokens` PADDED tokens each (source + target).

    A batch of n examples costs n * (longest source + longest target), what the GPU processes.
    Like `length_grouped_batches`: shuffle, sort mega-batches of `megabatch` examples by length,
    cut greedily, shuffle the batches. An example longer than the budget gets a batch of its own.
    """
    rng = random.Random(seed)
    order = list(range(len(src_lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        chunk = sorted(order[start : start + megabatch], key=lambda i: (src_lengths[i], tgt_lengths[i]), reverse=True)
        batch: list[int] = []
        src_max = tgt_max = 0
        for i in chunk:
            s, t = max(src_max, src_lengths[i]), max(tgt_max, tgt_lengths[i])
            if batch and (len(batch) + 1) * (s + t) > max_tokens:
                batches.append(batch)
                batch, s, t = [], src_lengths[i], tgt_lengths[i]
            batch.append(i)
            src_max, tgt_max = s, t
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches
