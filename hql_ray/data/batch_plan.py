"""How a node's examples become optimizer steps: one `BatchPlan`, asked by the node's loop, the dry run,
the scheduler (how many workers a node can use) and the memory estimate (what one forward pass holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    """Examples per optimizer step (`global_batch`) and per forward pass (`micro_batch`, None = a worker's
    whole share at once), and the steps an epoch and the node take."""

    global_batch: int
    micro_batch: int | None
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, train, examples: int, world_size: int = 1) -> "BatchPlan":
        """`train`: the config's train section. The global batch is train.batch_size whatever the number
        of workers (the original's batch 8 on one GPU), or batch_size per worker with train.batch_per_worker;
        length-grouped batches cut each mega-batch into whole batches, so an epoch is ceil(examples / batch)."""
        batch = global_batch(train, world_size)
        per_epoch = max(1, math.ceil(examples / batch))
        total = max(1, math.ceil(train.epochs * per_epoch))
        if train.max_steps:
            total = min(total, train.max_steps)
        return cls(batch, train.micro_batch_size, per_epoch, total)

    @property
    def per_pass(self) -> int:
        """Examples in one forward pass on one worker (the memory estimate's batch)."""
        return self.micro_batch or self.global_batch


def global_batch(train, world_size: int) -> int:
    return train.batch_size * (world_size if train.batch_per_worker else 1)


def max_workers(train, max_per_node: int, smallest_batch: int | None = None) -> int:
    """Most workers one node may use. With a global batch (the default) a worker needs at least one
    example of each optimizer step's batch, so no more workers than train.batch_size, or, with a token
    budget (train.batch_tokens, where a config has one), than the fewest examples any of the node's
    batches holds (`smallest_batch`; unknown = 1, the safe answer)."""
    if train.batch_per_worker:
        return max_per_node
    if getattr(train, "batch_tokens", None):
        return max(1, min(max_per_node, smallest_batch or 1))
    return min(max_per_node, train.batch_size)
