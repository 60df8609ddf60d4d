"""What a node's run does on its workers, one class per kind: train it (`Train`), score a trained node
again (`Reevaluate`, `--resume` after a failed evaluation), or stand in for training (`Simulate`,
`--simulate`). A job carries one of these; the worker calls `run` with the adapters it starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hql_ray.settings.config import Config
from hql_ray.settings.records import AdapterState, NodeResult, NodeSpec
from hql_ray.training.context import NodeContext
from hql_ray.training.simulate import Simulation, simulated_node


class NodeWork:
    """A kind of work on a node. `chain`: the adapters it starts from, in the order the job lists them."""

    kind: ClassVar[str] = ""
    reads_adapters: ClassVar[bool] = True  # False: the chain's tensors are not needed (a simulation)

    def run(self, cfg: Config, node: NodeSpec, chain: list[AdapterState], ctx: NodeContext) -> NodeResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Train(NodeWork):
    """Train the node from its ancestors' adapters (`node.train_node`)."""

    kind: ClassVar[str] = "train"

    def run(self, cfg, node, chain, ctx):
        # Imported here: transformers, PEFT and bitsandbytes cost a worker ~5 s of CPU to import, which a
        # simulated node (every worker of a 250-node dry walk) does not need.
        from hql_ray.training.node import train_node

        return train_node(cfg, node, chain, ctx)


@dataclass(frozen=True)
class Reevaluate(NodeWork):
    """Score a trained node again: the chain is its evaluation parents' adapters, then its own."""

    kind: ClassVar[str] = "reevaluate"

    def run(self, cfg, node, chain, ctx):
        from hql_ray.training.reevaluate import evaluate_trained_node  # (as Train.run: heavy imports)

        return evaluate_trained_node(cfg, node, chain, ctx)


@dataclass(frozen=True)
class Simulate(NodeWork):
    """Sleep as long as the node would train (`simulate.Simulation`); a token or real-shaped adapter."""

    kind: ClassVar[str] = "simulate"
    reads_adapters: ClassVar[bool] = False
    simulation: Simulation = Simulation(0.0)

    def run(self, cfg, node, chain, ctx):
        return simulated_node(self.simulation, node, ctx, cfg)
