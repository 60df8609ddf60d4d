"""How a node's examples become optimizer steps: one `BatchPlan`, asked by the node's loop, the dry run,
the scheduler (how many workers a node can use) and the memory estimate (what one forward pass holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hql_ray.data import batching


@dataclass(frozen=True)
class BatchPlan:
    """Examples per optimizer step (`global_batch`) or real tokens per step (`global_tokens`, train.batch_tokens),
    examples per forward pass (`micro_batch`, None = a worker's whole share at once), the steps an epoch and the
    node take, and each epoch's batches (`epoch_batches`, the node's loop)."""

    global_batch: int
    micro_batch: int | None
    steps_per_epoch: int | None  # None: token budgets without the examples' token counts (the dry run)
    total_steps: int | None
    global_tokens: int | None = None  # train.batch_tokens (scaled like global_batch); None = batches of examples
    group_by_length: bool = True

    @classmethod
    def of(cls, train, examples: int, world_size: int = 1,
           sizes: tuple[list[int], list[int]] | None = None) -> "BatchPlan":
        """`train`: the config's train section. The global batch is train.batch_size whatever the number
        of workers (the original's batch 8 on one GPU), or batch_size per worker with train.batch_per_worker;
        length-grouped batches cut each mega-batch into whole batches, so an epoch is ceil(examples / batch).
        With train.batch_tokens an epoch's step count follows the examples' token counts (`sizes`: each one's
        source and target tokens, as `dataset.example_sizes` gives them); without them it is None."""
        scale = world_size if train.batch_per_worker else 1
        batch = global_batch(train, world_size)
        tokens = train.batch_tokens * scale if train.batch_tokens else None
        if tokens is None:
            per_epoch = max(1, math.ceil(examples / batch))
        elif sizes is not None:  # every epoch cuts the same number of batches (token_budget_batches)
            per_epoch = max(1, len(batching.token_budget_batches(*sizes, tokens)))
        else:
            per_epoch = None
        total = None if per_epoch is None else max(1, math.ceil(train.epochs * per_epoch))
        if total is not None and train.max_steps:
            total = min(total, train.max_steps)
        return cls(batch, train.micro_batch_size, per_epoch, total, tokens, train.group_by_length)

    def epoch_batches(self, sizes: tuple[list[int], list[int]], seed: int) -> list[list[int]]:
        """One epoch's optimizer-step batches (the same on every worker, each trains its share of each): about
        global_tokens real tokens, or global_batch examples grouped by the longer side of each."""
        src, tgt = sizes
        if self.global_tokens:
            return batching.token_budget_batches(src, tgt, self.global_tokens, seed=seed)
        return batching.length_grouped_batches([max(s, t) for s, t in zip(src, tgt)], self.global_batch, seed=seed,
                                               group=self.group_by_length)

    @property
    def per_pass(self) -> int:
        """Examples in one forward pass on one worker (the memory estimate's batch)."""
        return self.micro_batch or self.global_batch

    def rows_per_pass(self, example_tokens: int) -> int:
        """Examples in one forward pass of examples of `example_tokens` source + target tokens: with a token
        budget, as many as it holds (at least one), else `per_pass`."""
        if self.micro_batch or not self.global_tokens:
            return self.per_pass
        return max(1, self.global_tokens // max(example_tokens, 1))


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
