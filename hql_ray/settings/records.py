"""The typed records that move between modules and across Ray: what a node trains on (`NodeSpec`), what it
gives back (`NodeResult`), and what the driver tells the terminal (`RunEvent`).

Plain dataclasses of plain fields (tensors inside `NodeResult.adapter` are numpy arrays once they have
crossed Ray, see `ray_worker.to_wire`), so they pickle through Ray's object store unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class RunEvent(str, Enum):
    """The driver's events (`on_event(kind, info)`); a str, so "node_done" == RunEvent.NODE_DONE."""

    RUN_STARTED = "run_started"  # info: run_dir, slots, gpu, nodes, board
    SKIPPED = "skipped"  # node: done in an earlier run, kept (--resume)
    NODE_STARTED = "node_started"  # node, workers
    NODE_WAITING = "node_waiting"  # node, trial, waited, message: its run waits for resources
    NODE_DONE = "node_done"  # node, metrics
    NODE_FAILED = "node_failed"  # node, error
    RUN_FINISHED = "run_finished"  # failed, not_done


@dataclass(frozen=True)
class NodeSpec:
    """A tree node as a training job sees it: who it is, its languages (code, display name), its data size."""

    id: str
    name: str
    level: str
    depth: int
    parent: str | None
    is_leaf: bool
    languages: tuple[tuple[str, str], ...]
    examples: int = 0
    step_offset: int = 0  # steps its ancestors trained: its steps counted from the root start here (tracking)

    @classmethod
    def of(cls, node, examples: int) -> "NodeSpec":
        """From a `tree.TreeNode` and the node's training-example count."""
        return cls(node.id, node.name, node.level, node.depth, node.parent, not node.children,
                   tuple((lang.code, lang.name) for lang in node.languages), examples)

    @classmethod
    def coerce(cls, value: "NodeSpec | dict") -> "NodeSpec":
        """A NodeSpec, or the same fields as a dict (scripts and tests written against the dict form)."""
        if isinstance(value, NodeSpec):
            return value
        return cls(value["id"], value.get("name", value["id"]), value.get("level", ""), int(value.get("depth", 0)),
                   value.get("parent"), bool(value.get("is_leaf", True)),
                   tuple((code, name) for code, name in value["languages"]), int(value.get("examples", 0)),
                   int(value.get("step_offset", 0)))


@dataclass
class AdapterState:
    """A node's trainable part, as it is handed on, persisted and exported.

    `tensors`: the LoRA factors in PEFT's saved-key format (``base_model.model.<module>.lora_A.weight``),
    so they load with ``set_peft_model_state_dict``; torch tensors, or numpy arrays while crossing Ray
    (`dtypes` then keeps the torch dtypes numpy lacks). `config`: the LoRA shape the way PEFT and the
    saved state.json name it (`LoraShape.to_state`), or for fft {"kind": "full", "aliases": {...}}:
    every weight of the model, tied ones stored once.
    """

    config: dict
    tensors: dict
    dtypes: dict = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        return self.config.get("kind") == "full"

    @property
    def lora(self):
        from hql_ray.settings.config import LoraShape

        return LoraShape.from_state(self.config)


@dataclass
class NodeResult:
    """What training a node gives back (rank 0's; other ranks return adapter=None)."""

    adapter: AdapterState | None  # the node's own adapter, or the full model (fft)
    metrics: dict  # initial/best val_loss, steps, examples, seconds, per-language scores ("languages")
    history: list[dict]  # validation and loss-curve points, by step
    trials: list[dict] | None = None  # a searched node: every trial (hql_ray.orchestration.tune)
    workers: list[dict] = field(default_factory=list)  # host, node_ip, pid, gpu_ids of each worker
    received_checksums: list[str] = field(default_factory=list)  # the ancestors' adapters it started from
    # The adapter went to the run's keeper (hql_ray.orchestration.keeper), which saved it: its checksum; adapter is None.
    kept_checksum: str | None = None
