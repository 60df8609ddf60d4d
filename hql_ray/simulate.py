"""A stand-in node trainer that only sleeps: time = seconds_per_example * examples * epochs / workers.

It runs inside the real driver and real Ray Train workers, so a whole tree's schedule can be
previewed or benchmarked (`benchmarks/scheduler.py`, `hql-ray train --simulate SECONDS_PER_EXAMPLE`)
without a model. It returns a tiny adapter so the hand-off and export paths still run.
"""

from __future__ import annotations

import time

import torch

from hql_ray.records import AdapterState, NodeResult, NodeSpec


def simulated_seconds(sim: dict, node: NodeSpec, world_size: int) -> float:
    return float(sim["seconds_per_example"]) * node.examples * float(sim.get("epochs", 1.0)) / max(world_size, 1)


def simulated_node(sim: dict, node: NodeSpec, ctx) -> NodeResult:
    seconds = simulated_seconds(sim, node, ctx.world_size)
    ctx.progress({"node": node.id, "phase": "train", "step": 0, "total_steps": 1})
    time.sleep(seconds)
    ctx.report({"done": True}, None)
    adapter = AdapterState({"r": 1, "lora_alpha": 1, "use_rslora": False, "lora_dropout": 0.0, "target_modules": ["q"]},
                           {"simulated": torch.tensor([float(node.examples)])})
    return NodeResult(adapter, {"simulated_seconds": seconds, "examples": node.examples, "world_size": ctx.world_size}, [])
