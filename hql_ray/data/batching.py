"""Batching and padding: pure Python + torch, no `datasets`, no corpus code.

Kept apart from `hql_ray.data.dataset` (which re-exports it): the node's batches, by examples
(train.batch_size) or by real tokens (train.batch_tokens), and their padding (train.pad_to_multiple).
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


def padded_width(longest: int, multiple: int = 0) -> int:
    """`longest` rounded up to a multiple of `multiple` (0: unchanged): train.pad_to_multiple."""
    return -(-longest // multiple) * multiple if multiple else longest


def collate(rows: list[dict], pad_id: int, label_pad: int = -100, multiple: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids/attention_mask with pad_id/0, labels with -100 (ignored by the loss), each to its
    longest example (or up to a multiple of `multiple`)."""
    width = padded_width(max(len(r["input_ids"]) for r in rows), multiple)
    target_width = padded_width(max(len(r["labels"]) for r in rows), multiple)
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
    src_lengths: list[int], tgt_lengths: list[int], max_tokens: int, seed: int = 0
) -> list[list[int]]:
    """Batches of at most `max_tokens` REAL tokens each (source + target; an example longer than that gets a
    batch of its own), in random order: train.batch_tokens.

    fairseq's recipe: examples sorted by their token count (ties in a seeded random order), cut greedily, the
    batches shuffled. Neighbours in that order have nearly the same lengths, so padding stays low, and the cuts
    depend only on the sorted counts: every epoch (every seed) has the same number of batches, of the same
    sizes, and only which of equally long examples go together, and the order, change.
    """
    rng = random.Random(seed)
    total = [s + t for s, t in zip(src_lengths, tgt_lengths)]
    ties = [rng.random() for _ in total]
    order = sorted(range(len(total)), key=lambda i: (total[i], ties[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    used = 0
    for i in order:
        if batch and used + total[i] > max_tokens:
            batches.append(batch)
            batch, used = [], 0
        batch.append(i)
        used += total[i]
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches
