"""The driver's walk as an event loop without Ray: what a scheduling policy gives on a tree (makespan).

It models what the real driver can do: a child is ready once its parent is done; a policy's `Decision`
launches nodes on fixed workers; a node's workers change only at one of its checkpoints (every
`checkpoint_work` of its own work), where a resize costs `resize_cost` (a restart from the checkpoint: it
makes no progress meanwhile and holds the larger of its old and new worker counts); a launch costs
`start_cost`. With `barrier`, a depth starts only once every shallower node is done (the "level by
level" baseline, resources.level_barrier). Work is in seconds on one worker; a node on k workers does k
of it per second (perfect data-parallel scaling, what the lower bounds assume too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hql_ray.orchestration.scheduling import NodeLoad, Policy, Running, SchedulerView

EPS = 1e-9


@dataclass
class Costs:
    checkpoint_work: float = math.inf  # a checkpoint every this much of a node's own work (inf: none)
    start_cost: float = 0.0  # seconds a launch takes before its first step
    resize_cost: float = 0.0  # seconds a resize takes (a restart from the checkpoint just saved)
    node_start: dict[str, float] = field(default_factory=dict)  # a node's own start cost (e.g. measured)

    def start(self, node: str) -> float:
        return self.node_start.get(node, self.start_cost)


@dataclass
class _Node:
    load: NodeLoad
    workers: int
    remaining: float
    held: int  # slots it holds (during a resize: the larger count)
    paused_until: float  # no progress before this time (start-up, resize)
    next_checkpoint: float  # remaining work at its next checkpoint
    started: float = 0.0


@dataclass
class ReplayResult:
    makespan: float
    starts: dict[str, float] = field(default_factory=dict)
    finishes: dict[str, float] = field(default_factory=dict)
    workers: dict[str, list[int]] = field(default_factory=dict)  # every worker count a node ran on
    resizes: int = 0
    busy: float = 0.0  # slot-seconds held by nodes (work + start-up + resizes)


class Replay:
    """One replay of `policy` on the tree `loads` (children from `parents`) on `slots` slots."""

    def __init__(self, loads: dict[str, NodeLoad], parents: dict[str, str | None], slots: int, policy: Policy,
                 costs: Costs | None = None, barrier: bool = False, depths: dict[str, int] | None = None):
        self.loads, self.parents, self.slots, self.policy = loads, parents, slots, policy
        self.costs, self.barrier = costs or Costs(), barrier
        self.children: dict[str, list[str]] = {n: [] for n in loads}
        for node, parent in parents.items():
            if parent is not None:
                self.children[parent].append(node)
        self.depth = depths or {n: _depth(n, parents) for n in loads}  # (the barrier's levels)
        self.unfinished = set(loads)
        self.now = 0.0
        self.ready = [n for n, p in parents.items() if p is None]
        self.running: dict[str, _Node] = {}
        self.result = ReplayResult(0.0)

    def run(self) -> ReplayResult:
        checkpointed: list[str] = []
        while True:
            self._decide(checkpointed)
            if not self.running:
                if self.ready:
                    raise RuntimeError(f"policy {self.policy.name} launched nothing with {self.slots} free slots "
                                       f"and {len(self.ready)} ready nodes")
                self.result.makespan = self.now
                return self.result
            checkpointed = self._advance()

    def view(self, checkpointed: list[str]) -> SchedulerView:
        running = [Running(n.load, n.workers, n.remaining, at_checkpoint=name in checkpointed)
                   for name, n in self.running.items()]
        free = self.slots - sum(n.held for n in self.running.values())
        return SchedulerView([self.loads[n] for n in self._startable()], running, free, self.slots)

    def _startable(self) -> list[str]:
        if not self.barrier or not self.unfinished:
            return self.ready
        shallowest = min(self.depth[n] for n in self.unfinished)
        return [n for n in self.ready if self.depth[n] <= shallowest]

    def _decide(self, checkpointed: list[str]) -> None:
        view = self.view(checkpointed)
        if view.free_slots <= 0 or not (view.ready or checkpointed):
            return  # nothing can start or grow (policies never take slots back)
        decision = self.policy.decide(view)
        taken = decision.slots + sum(max(0, w - self.running[n].workers) for n, w in decision.resizes.items())
        if taken > view.free_slots:
            raise RuntimeError(f"policy {self.policy.name} took {taken} slots, {view.free_slots} free")
        for name, span in decision.launches.items():
            self.ready.remove(name)
            load = self.loads[name]
            self.running[name] = _Node(load, span.min, load.work, span.min, self.now + self.costs.start(name),
                                       load.work - self.costs.checkpoint_work, started=self.now)
            self.result.starts[name] = self.now
            self.result.workers[name] = [span.min]
        for name, workers in decision.resizes.items():
            if name not in checkpointed:
                raise RuntimeError(f"policy {self.policy.name} resized {name} away from a checkpoint")
            node = self.running[name]
            if workers != node.workers:
                node.held = max(node.workers, workers)
                node.workers = workers
                node.paused_until = self.now + self.costs.resize_cost
                self.result.resizes += 1
                self.result.workers[name].append(workers)

    def _advance(self) -> list[str]:
        """Move time to the next finish, checkpoint or end of a pause; returns the nodes at a checkpoint."""
        step = min(self._time_to_event(n) for n in self.running.values())
        for node in self.running.values():
            self.result.busy += node.held * step
            active = max(0.0, self.now + step - max(self.now, node.paused_until))
            node.remaining -= node.workers * active
            if self.now + step >= node.paused_until - EPS:
                node.held = node.workers
        self.now += step
        checkpointed = []
        for name, node in list(self.running.items()):
            if node.remaining <= EPS * max(1.0, node.load.work):
                del self.running[name]
                self.unfinished.discard(name)
                self.result.finishes[name] = self.now
                self.ready.extend(self.children[name])
            elif node.remaining <= node.next_checkpoint + EPS * max(1.0, node.load.work):
                node.next_checkpoint -= self.costs.checkpoint_work
                checkpointed.append(name)
        return checkpointed

    def _time_to_event(self, node: _Node) -> float:
        wait = max(0.0, node.paused_until - self.now)
        if wait > EPS:
            return wait
        target = max(node.next_checkpoint, 0.0)
        return max((node.remaining - target) / node.workers, 0.0)


def _depth(node: str, parents: dict[str, str | None]) -> int:
    depth = 0
    while parents.get(node) is not None:
        node, depth = parents[node], depth + 1
    return depth


def replay(loads: dict[str, NodeLoad], parents: dict[str, str | None], slots: int, policy: Policy,
           costs: Costs | None = None, barrier: bool = False, depths: dict[str, int] | None = None) -> ReplayResult:
    """`depths`: each node's level for the barrier (default: from `parents`; a part of a tree passes its own)."""
    return Replay(loads, parents, slots, policy, costs, barrier, depths).run()
