"""The driver's state during one walk of the tree (`Run`), and the adapter references it holds (`AdapterRefs`).

The driver holds no adapter bytes: finished nodes' adapters are on disk (nodes/<id>/adapter) and in the
object store, owned by the run's keeper (or, after --resume, by tasks on the head); the driver keeps a
reference while a node still to run starts from it, and drops it as soon as none does.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from hql_ray.orchestration import keeper
from hql_ray.orchestration.job import NodeJob
from hql_ray.orchestration.run_model import Slots
from hql_ray.orchestration.watch import RunWatch
from hql_ray.outputs.manifest import Manifest


class AdapterRefs:
    """node id -> the object-store reference of its adapter, kept while a node still to run needs it."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef] = {}

    def add(self, node_id: str, ref: ray.ObjectRef) -> None:
        self._refs[node_id] = ref

    def of(self, node_ids) -> list[ray.ObjectRef]:
        return [self._refs[n] for n in node_ids]

    def missing(self, node_ids) -> list[str]:
        return [n for n in node_ids if n not in self._refs]

    def keep_only(self, needed: set[str]) -> None:
        """Let the object store free the adapters no node still to run needs (running nodes hold their own refs)."""
        for node_id in [n for n in self._refs if n not in needed]:
            del self._refs[node_id]

    def load_saved(self, head: str, run_dir: Path, manifest: Manifest, node_ids) -> None:
        """Saved adapters of an earlier launch put back in the object store by tasks on the head (--resume)."""
        for node_id in sorted(node_ids):
            if node_id not in self._refs:
                self._refs[node_id] = keeper.load_saved(head, run_dir / manifest.nodes[node_id].adapter)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._refs


@dataclass
class Launch:
    """A node's run in flight."""

    node: str
    workers: int
    job: NodeJob
    executor: str  # ray-train | warm | tune

    @property
    def is_evaluation(self) -> bool:
        return self.job.work.kind == "reevaluate"


@dataclass
class Run:
    """One walk of the tree: its record, what the cluster offers, and the driver's view of the nodes."""

    manifest: Manifest
    slots: Slots
    sizes: dict[str, int]  # node -> training examples
    storage: str  # Ray Train storage path (absolute, or a URI)
    board: Any  # the RunBoard actor
    watch: RunWatch
    keeper: Any  # the AdapterKeeper actor: finished nodes' adapters, saved and held for the children
    head: str  # Ray node id of the driver's machine (the run folder): where the keeper and exports run
    searches: Any = None  # the search_state.Searches actor, when a level of the run is searched
    refs: AdapterRefs = field(default_factory=AdapterRefs)
    running: dict[Future, Launch] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    evaluate: set[str] = field(default_factory=set)  # --resume: done nodes whose evaluation failed, to score again
    resizing: dict[str, int] = field(default_factory=dict)  # resources.elastic: node asked to pause -> new workers
    next_resize_check: float = 0.0  # (time.time) when free slots may next be offered to running nodes

    @property
    def busy_slots(self) -> int:
        return sum(launch.workers for launch in self.running.values())

    @property
    def free_slots(self) -> int:
        """Slots no run holds and no resized node is due (it takes them when it goes on from its checkpoint)."""
        due = sum(workers - self.training.get(node, workers) for node, workers in self.resizing.items())
        return self.slots.total - self.busy_slots - due

    @property
    def training(self) -> dict[str, int]:
        """Nodes training now -> their workers (what the scheduling policy weighs; re-evaluations left out)."""
        return {launch.node: launch.workers for launch in self.running.values() if not launch.is_evaluation}

    @property
    def in_flight(self) -> set[str]:
        return {launch.node for launch in self.running.values()}
