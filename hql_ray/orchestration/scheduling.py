"""How many data-parallel workers each ready node gets. Pure functions: easy to test and to reason about.

A node's work is its examples x epochs. When fewer nodes are ready than slots are free (the root has
the whole cluster to itself), a node gets several workers instead of leaving slots idle; when more
are ready, the biggest go first and the rest wait for a slot.
"""

from __future__ import annotations


def max_workers(cfg) -> int:
    """Most workers one node may use. With a global batch (the default) a worker needs at least one
    example of each optimizer step's batch, so no more workers than train.batch_size."""
    limit = cfg.resources.max_workers_per_node
    return limit if cfg.train.batch_per_worker else min(limit, cfg.train.batch_size)


def max_useful_workers(examples: int, max_per_node: int, min_examples_per_worker: int) -> int:
    """Don't spread a small node so thin that workers mostly wait on each other."""
    by_size = max(1, examples // max(min_examples_per_worker, 1))
    return max(1, min(max_per_node, by_size))


def allocate_workers(
    ready: list[tuple[str, int]],
    free_slots: int,
    max_per_node: int = 8,
    min_examples_per_worker: int = 64,
) -> dict[str, int]:
    """Share `free_slots` among ready nodes [(node_id, examples), ...] -> {node_id: workers}.

    Largest nodes first; every node that fits gets one slot, then the remaining slots go one at a
    time to the node with the most work per worker (so a 31K-example node with 2 workers is served
    before a 10K one with 1). Nodes left out stay ready for the next free slot.
    """
    if free_slots <= 0 or not ready:
        return {}
    order = sorted(ready, key=lambda item: -item[1])
    chosen = order[:free_slots]
    alloc = {node_id: 1 for node_id, _ in chosen}
    caps = {node_id: max_useful_workers(ex, max_per_node, min_examples_per_worker) for node_id, ex in chosen}
    examples = dict(chosen)
    left = free_slots - len(chosen)
    while left > 0:
        candidates = [n for n in alloc if alloc[n] < caps[n]]
        if not candidates:
            break
        best = max(candidates, key=lambda n: (examples[n] / alloc[n], examples[n]))
        alloc[best] += 1
        left -= 1
    return alloc


def lower_bound(
    node_work: dict[str, float], parents: dict[str, str | None], slots: int, max_per_node: int | None = None
) -> float:
    """max(critical path, total work / slots): no schedule can beat either.

    Along a root-to-leaf path each node takes at least its work divided by the most workers it may
    use (min(slots, max_per_node)), with perfect data-parallel scaling.
    """
    width = min(slots, max_per_node or slots)
    memo: dict[str, float] = {}

    def path(node_id: str) -> float:
        if node_id not in memo:
            parent = parents.get(node_id)
            memo[node_id] = node_work[node_id] / width + (path(parent) if parent else 0.0)
        return memo[node_id]

    critical = max(path(n) for n in node_work)
    return max(critical, sum(node_work.values()) / slots)
