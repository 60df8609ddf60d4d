"""A stand-in node trainer that only sleeps: time = seconds_per_example * examples * epochs / workers.

It runs inside the real driver and real Ray Train workers, so a whole tree's schedule can be
previewed or benchmarked (`benchmarks/scheduler.py`, `hql-ray train --simulate SECONDS_PER_EXAMPLE`)
without a model. Its adapter is a token one, or, with `--simulate-adapters real`, random tensors with
the real model's LoRA shapes (from the model config on the meta device: no weights loaded), so the
driver, the object store, persistence and exports move the bytes a real run moves
(`benchmarks/head_memory.py`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from hql_ray.settings.config import Config, LoraShape
from hql_ray.settings.records import AdapterState, NodeMetrics, NodeResult, NodeSpec, Progress
from hql_ray.training.memory import base_model_config

ADAPTERS = ("tiny", "real")


@dataclass(frozen=True)
class Simulation:
    """`--simulate`: how long a stand-in node sleeps, and what adapter it returns (tiny or real-shaped)."""

    seconds_per_example: float
    epochs: float = 1.0
    adapters: str = "tiny"  # tiny | real
    examples: int = 31000  # training examples per language (the paper's cap)
    examples_per_language: tuple[tuple[str, int], ...] = ()  # (code, examples) where they differ

    def examples_of(self, code: str) -> int:
        return dict(self.examples_per_language).get(code, self.examples)

    def seconds(self, node: NodeSpec, world_size: int) -> float:
        return self.seconds_per_example * node.examples * self.epochs / max(world_size, 1)


@functools.lru_cache(maxsize=4)
def lora_shapes(base: str, lora_state: tuple) -> dict[str, tuple[int, ...]]:
    """The node adapter's tensors (PEFT state-dict keys, as `handoff.node_adapter_state` names them) and
    shapes for `base` with LoRA settings `lora_state` (LoraShape.to_state() items): built on the meta device."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForSeq2SeqLM


    lora = LoraShape.from_state(dict(lora_state))
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(base_model_config(base, local_only=False))
    peft_model = get_peft_model(model, lora.to_peft())
    params = {k: v for k, v in peft_model.named_parameters() if "lora_" in k}
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model, state_dict=params).items()}


def real_shaped_adapter(cfg: Config, seed: int) -> AdapterState:
    """Random fp32 tensors with the node adapter's real shapes (1.17 GB at mT5-large r=256)."""
    state = cfg.model.lora.to_state()
    shapes = lora_shapes(cfg.model.base, tuple((k, tuple(v) if isinstance(v, list) else v)
                                                    for k, v in sorted(state.items())))
    # A random value per tensor, filled: drawing 293M normals would take longer than the node.
    values = torch.randn(len(shapes), generator=torch.Generator().manual_seed(seed)) * 0.01
    tensors = {key: torch.full(shape, float(v)) for (key, shape), v in zip(shapes.items(), values)}
    return AdapterState(state, tensors)


def simulated_node(sim: Simulation, node: NodeSpec, ctx, cfg: Config) -> NodeResult:
    seconds = sim.seconds(node, ctx.world_size)
    ctx.progress(Progress(node=node.id, phase="train", step=0, total_steps=1))
    time.sleep(seconds)
    ctx.report({"done": True}, None)
    if sim.adapters == "real":
        adapter = real_shaped_adapter(cfg, seed=node.examples) if ctx.is_main else None
    else:
        adapter = AdapterState({"r": 1, "lora_alpha": 1, "use_rslora": False, "lora_dropout": 0.0,
                                "target_modules": ["q"]}, {"simulated": torch.tensor([float(node.examples)])})
    metrics = NodeMetrics(simulated_seconds=seconds, examples=node.examples, world_size=ctx.world_size)
    return NodeResult(adapter, metrics, [])
