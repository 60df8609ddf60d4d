"""How many data-parallel workers each node gets, and when. Pure functions and small classes: no Ray, no clock.

A node's work is its examples x epochs (any unit proportional to time on one worker). A node on k workers
takes work / k. The driver asks a policy (`resources.policy`, one class per name in `POLICIES`) what to do
whenever something changes: given the ready nodes, the running ones and the free slots (a `SchedulerView`),
the policy returns a `Decision`: the nodes to launch, each with a `WorkerRange` (start on `min` workers,
may grow to `max` at a checkpoint), and the running nodes to resize now (only those at a checkpoint).

- `largest-first` (today's rule, `allocate_workers`): biggest ready nodes first, spare slots one at a time
  to the node with the most work per worker; a node keeps its workers to the end.
- `critical-path`: the node with the longest chain of work still below it first; each node gets the
  workers it needs so that its chain does not end after the best finish still possible (`Target`), the
  critical chain gets all it can use, spare slots go to the most urgent nodes, and a running node grows
  at a checkpoint when slots free up (elastic, within its range).

A node never gets more workers than it can use (`NodeLoad.max_workers`: resources.max_workers_per_node,
the global batch (`batch_plan.max_workers`), its size (`max_useful_workers`)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar, Mapping

from hql_ray.data.batch_plan import max_workers

# A resize restarts a node from its checkpoint: ~1-2 min on a GPU (Ray Train start-up, the 4-bit base
# loaded again), about 1000 examples of one mT5-large worker at ~0.13 s/example. Growing must save more.
RESIZE_COST = 1000.0

# ---- limits ---------------------------------------------------------------------------------------


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
    order = sorted(ready, key=lambda item: (-item[1], item[0]))  # ties by name: the same whatever order they came in
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


# ---- what the policy sees -------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeLoad:
    """One node's work as a policy sees it (`node_loads` makes them from the tree)."""

    id: str
    work: float  # its own examples x epochs
    max_workers: int  # most workers it can use
    below: float  # longest chain under it (children to a leaf), each node at its max_workers, in work per worker
    subtree: float = 0.0  # the work of all its descendants
    size: int = 0  # its examples (what largest-first ranks by)

    @property
    def chain(self) -> float:
        """Its own best time plus the longest chain below: how long its subtree takes at best."""
        return self.work / self.max_workers + self.below


@dataclass(frozen=True)
class Running:
    load: NodeLoad
    workers: int
    remaining: float  # its own work still to do
    at_checkpoint: bool = False  # it just saved a checkpoint: it can be resized now without losing work


@dataclass(frozen=True)
class SchedulerView:
    ready: list[NodeLoad]
    running: list[Running]
    free_slots: int
    total_slots: int


@dataclass(frozen=True)
class WorkerRange:
    min: int  # the workers it starts on
    max: int  # the most it may grow to at a checkpoint


@dataclass
class Decision:
    launches: dict[str, WorkerRange] = field(default_factory=dict)
    resizes: dict[str, int] = field(default_factory=dict)  # running node at a checkpoint -> its new workers

    @property
    def slots(self) -> int:
        """Slots these launches take now (a resize takes its new count minus its old on top)."""
        return sum(r.min for r in self.launches.values())


def node_loads(work: Mapping[str, float], parents: Mapping[str, str | None],
               caps: Mapping[str, int], sizes: Mapping[str, int] | None = None) -> dict[str, NodeLoad]:
    """NodeLoad of every node of a tree given each node's work, parent and max workers."""
    children = _children(parents)
    below: dict[str, float] = {}
    subtree: dict[str, float] = {}
    for node in _bottom_up(children, parents):
        kids = children[node]
        below[node] = max((work[c] / caps[c] + below[c] for c in kids), default=0.0)
        subtree[node] = sum(work[c] + subtree[c] for c in kids)
    return {n: NodeLoad(n, float(work[n]), int(caps[n]), below[n], subtree[n], int((sizes or {}).get(n, work[n])))
            for n in work}


def _bottom_up(children: Mapping[str, list[str]], parents: Mapping[str, str | None]) -> list[str]:
    order, stack = [], [n for n, p in parents.items() if p is None]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(children[node])
    return order[::-1]


def lower_bound(node_work: dict[str, float], parents: dict[str, str | None], slots: int,
                max_per_node: int | dict[str, int] | None = None) -> float:
    """max(critical path, total work / slots): no schedule can beat either.

    Along a root-to-leaf path each node takes at least its work divided by the most workers it may
    use (min(slots, max_per_node), or per node with a dict), with perfect data-parallel scaling.
    """
    caps = _caps(node_work, slots, max_per_node)
    loads = node_loads(node_work, parents, caps)
    critical = max(load.chain for n, load in loads.items() if parents.get(n) is None)
    return max(critical, sum(node_work.values()) / slots)


def subtree_bound(node_work: dict[str, float], parents: dict[str, str | None], slots: int,
                  max_per_node: int | dict[str, int] | None = None) -> float:
    """A lower bound at least as high as `lower_bound`: for every node n, n's descendants start only once n
    (and so the whole path from the root to n, each at its max workers) is done, and then need at least
    max(their critical path, their work / slots). Where the root can use few of the slots, this counts the
    slots it must leave idle."""
    caps = _caps(node_work, slots, max_per_node)
    loads = node_loads(node_work, parents, caps)
    above: dict[str, float] = {}
    for node in reversed(_bottom_up(_children(parents), parents)):
        parent = parents.get(node)
        above[node] = (above[parent] if parent else 0.0) + node_work[node] / caps[node]
    best = max(above[n] + max(load.below, load.subtree / slots) for n, load in loads.items())
    return max(best, sum(node_work.values()) / slots)


def _children(parents: Mapping[str, str | None]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for node, parent in parents.items():
        out.setdefault(node, [])
        if parent is not None:
            out.setdefault(parent, []).append(node)
    return out


def _caps(node_work, slots: int, max_per_node) -> dict[str, int]:
    if isinstance(max_per_node, Mapping):
        return {n: max(1, min(slots, max_per_node[n])) for n in node_work}
    width = min(slots, max_per_node or slots)
    return {n: width for n in node_work}


# ---- policies -------------------------------------------------------------------------------------
class Policy:
    """Which ready nodes start, on how many workers, and which running nodes grow. Subclasses register
    themselves in POLICIES under `name` (resources.policy)."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            POLICIES[cls.name] = cls

    @classmethod
    def configured(cls, *, min_examples_per_worker: int, resize_cost: float, elastic: bool = True) -> "Policy":
        """This policy with a run's options (each class takes those it uses). `elastic`: whether running nodes
        may be resized at their checkpoints (the real driver keeps a node's workers to its end)."""
        return cls()

    def decide(self, view: SchedulerView) -> Decision:
        raise NotImplementedError

    def resize(self, view: SchedulerView, node_id: str) -> int | None:
        """At `node_id`'s checkpoint (the driver calls this when a running node reports one): the workers it
        should go on with, or None to keep its own. Launches this implies are left for the next `decide`."""
        running = [replace(r, at_checkpoint=r.load.id == node_id) for r in view.running]
        return self.decide(replace(view, running=running)).resizes.get(node_id)


POLICIES: dict[str, type[Policy]] = {}


def policy_class(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; valid: {', '.join(POLICIES)}")
    return POLICIES[name]


def make_policy(name: str, **options) -> Policy:
    return policy_class(name)(**options)


def policy_for(cfg, resize_cost: float = RESIZE_COST, elastic: bool = True) -> Policy:
    """The policy resources.policy names, with the run's options (`resize_cost` in examples x epochs per
    worker, the unit of `tree_loads`' work; `elastic`: whether running nodes grow at checkpoints)."""
    return policy_class(cfg.resources.policy).configured(
        min_examples_per_worker=cfg.resources.min_examples_per_worker, resize_cost=resize_cost, elastic=elastic)


def tree_loads(cfg, tree, sizes: Mapping[str, int], smallest_batches: Mapping[str, int] | None = None
               ) -> dict[str, NodeLoad]:
    """Every node's NodeLoad for a run: work = examples x train.epochs; max workers = resources.max_workers_per_node,
    the global batch (`max_workers`; with a token budget, the fewest examples of any of the node's batches,
    `smallest_batches`) and its size (resources.min_examples_per_worker)."""
    res = cfg.resources
    caps = {n: min(max_workers(cfg.train, res.max_workers_per_node, (smallest_batches or {}).get(n)),
                   max_useful_workers(sizes[n], res.max_workers_per_node, res.min_examples_per_worker))
            for n in tree.nodes}
    work = {n: sizes[n] * cfg.train.epochs for n in tree.nodes}
    return node_loads(work, {n: node.parent for n, node in tree.nodes.items()}, caps, sizes)


class WithoutProgress(Policy):
    """`inner` as the real driver asks it: the driver does not follow how far a running node is, so a running
    node counts with all its own work still to do. `RunModel` asks this for the driver and the dry run alike."""

    def __init__(self, inner: Policy):
        self.inner = inner
        self.name = inner.name  # (an instance attribute: the wrapper itself is not in POLICIES)

    def decide(self, view: SchedulerView) -> Decision:
        running = [replace(r, remaining=r.load.work) for r in view.running]
        return self.inner.decide(replace(view, running=running))


class LargestFirst(Policy):
    """Today's rule: `allocate_workers` (biggest first, spare slots by work per worker), fixed workers."""

    name = "largest-first"

    def __init__(self, min_examples_per_worker: int = 64):
        self.min_examples_per_worker = min_examples_per_worker

    @classmethod
    def configured(cls, *, min_examples_per_worker: int, resize_cost: float, elastic: bool = True) -> Policy:
        return cls(min_examples_per_worker)

    def decide(self, view: SchedulerView) -> Decision:
        caps = {n.id: n.max_workers for n in view.ready}
        sizes = [(n.id, n.size) for n in view.ready]
        alloc = allocate_workers(sizes, view.free_slots, max(caps.values(), default=1), self.min_examples_per_worker)
        return Decision({n: WorkerRange(min(w, caps[n]), min(w, caps[n])) for n, w in alloc.items()})


class CriticalPath(Policy):
    """Longest remaining chain first, each node on the workers its chain needs, growing when slots free up.

    The target is the best finish still possible: the longest chain (running nodes from their remaining
    work, each node at its max workers) or all the work left over all slots, whichever is longer. A node
    needs the fewest workers that end its own work by the target minus the chain below it (what its
    children will need); needs are met most urgent first (the critical chain gets all it can use). Slots
    still free then go one at a time to the node whose chain would end last (water-filling), so that none
    idles while work is waiting. A running node grows only at a checkpoint, and only when that saves more
    than `resize_cost` (in work per worker: the restart); slots it is due stay free until then.
    """

    name = "critical-path"

    def __init__(self, resize_cost: float = 0.0, spare: bool = True, grow: bool = True):
        self.resize_cost = resize_cost
        self.spare = spare  # share the slots left after the needs (work-conserving)
        self.grow = grow  # resize running nodes at their checkpoints (elastic)

    @classmethod
    def configured(cls, *, min_examples_per_worker: int, resize_cost: float, elastic: bool = True) -> Policy:
        return cls(resize_cost=resize_cost, grow=elastic)

    def decide(self, view: SchedulerView) -> Decision:
        shares = _Shares(view, self.resize_cost if self.grow else math.inf)
        shares.meet_needs(_target(view))
        if self.spare:
            shares.fill()
        return shares.decision()


class _Shares:
    """Workers per node (ready: 0 so far; running: what it has) while a CriticalPath decision is made."""

    def __init__(self, view: SchedulerView, resize_cost: float):
        self.view, self.resize_cost = view, resize_cost
        self.nodes = {n.id: (n, n.work) for n in view.ready} | {r.load.id: (r.load, r.remaining) for r in view.running}
        self.now = {r.load.id: r.workers for r in view.running}
        self.give = {n: self.now.get(n, 0) for n in self.nodes}
        self.free = view.free_slots

    def can_add(self, node: str) -> bool:
        """One more worker is worth it: below its max, and for a running node, a restart pays off."""
        load, left = self.nodes[node]
        k = self.give[node]
        if k >= load.max_workers:
            return False
        if node not in self.now or k > self.now[node]:
            return True
        return left * (1 / k - 1 / (k + 1)) > self.resize_cost

    def meet_needs(self, target: float) -> None:
        """Most urgent first (longest chain at max workers), raise each node to its need while slots last."""
        order = sorted(self.nodes, key=lambda n: (-(self.nodes[n][1] / self.nodes[n][0].max_workers
                                                    + self.nodes[n][0].below), n))
        for node in order:
            load, left = self.nodes[node]
            need = _need(left, load, target)
            while self.free > 0 and self.give[node] < need and self.can_add(node):
                self.give[node] += 1
                self.free -= 1

    def fill(self) -> None:
        """Spare slots one at a time to the node whose chain, on the workers it has, would end last."""
        def ends(node: str) -> float:
            load, left = self.nodes[node]
            return left / max(self.give[node], 1e-9) + load.below

        while self.free > 0:
            open_ = [n for n in self.nodes if self.can_add(n)]
            if not open_:
                return
            best = max(open_, key=lambda n: (ends(n), n))
            self.give[best] += 1
            self.free -= 1

    def decision(self) -> Decision:
        decision = Decision()
        checkpointed = {r.load.id for r in self.view.running if r.at_checkpoint}
        for node, k in self.give.items():
            if node not in self.now and k > 0:
                decision.launches[node] = WorkerRange(k, self.nodes[node][0].max_workers)
            elif node in checkpointed and k > self.now.get(node, 0):
                decision.resizes[node] = k
        return decision


def _need(work: float, load: NodeLoad, target: float) -> int:
    room = target - load.below
    if room <= 0:
        return load.max_workers
    return max(1, min(load.max_workers, math.ceil(work / room - 1e-9)))


def _target(view: SchedulerView) -> float:
    """The best finish still possible from now: the longest remaining chain, or the work left over the slots."""
    chains = [n.chain for n in view.ready] + [r.remaining / r.load.max_workers + r.load.below for r in view.running]
    area = sum(n.work + n.subtree for n in view.ready) + sum(r.remaining + r.load.subtree for r in view.running)
    return max(max(chains, default=0.0), area / max(view.total_slots, 1))
