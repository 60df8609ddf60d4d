"""A stand-in node trainer that only sleeps: time = seconds_per_example * examples * epochs / workers.

It runs inside the real driver and real Ray Train workers, so a whole tree's schedule can be
previewed or benchmarked (`benchmarks/scheduler.py`, `hql-ray train --simulate SECONDS_PER_EXAMPLE`)
without a model. A node of a searched level (the `tune:` section) also reports made-up validation losses
(`simulated_losses`), so that a simulated search runs its trials, ASHA and the choice of the best as a real
one does. Its adapter is a token one, or, with `--simulate-adapters real`, random tensors with
the real model's LoRA shapes (from the model config on the meta device: no weights loaded), so the
driver, the object store, persistence and exports move the bytes a real run moves
(`benchmarks/head_memory.py`).
"""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from hql_ray.settings.config import Config, LoraShape
from hql_ray.settings.records import AdapterState, HistoryPoint, NodeMetrics, NodeResult, NodeSpec, Progress
from hql_ray.settings.search_space import searches_level
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


# A searched level's simulated node validates this many times, evenly over its work (ASHA's rungs count them).
VALIDATIONS = 4
BEST_LEARNING_RATE = 3e-4  # where the made-up loss is lowest


def simulated_losses(cfg: Config, node: NodeSpec) -> list[float]:
    """A searched node's made-up validation losses, the initial one first, then one per validation: a curve
    from 10 down to a floor set by the trial's values (lowest at learning rate 3e-4, lower at a higher rank),
    with a small fixed offset per node. Not a model of training: something for a simulated search to rank."""
    lr, r = cfg.train.learning_rate, cfg.model.lora.r
    offset = (zlib.crc32(node.id.encode()) % 1000) / 1e5
    floor = 1.0 + 0.3 * math.log10(lr / BEST_LEARNING_RATE) ** 2 + 2.0 / r + offset
    return [floor + (10.0 - floor) * 0.5 ** v for v in range(VALIDATIONS + 1)]


def validations_done(losses: list[float], share_done: float) -> int:
    """How many of the validations fall at or before this share of the work."""
    return 0 if not losses else min(VALIDATIONS, math.floor(share_done * VALIDATIONS + 1e-9))


# A simulated node sleeps in slices of this many seconds, asking between them whether to checkpoint (a stop,
# or a pause for a resize): its "steps" are slices, its checkpoint the work done so far.
SLICE_S = 0.5
PROGRESS_FILE = "simulated.json"


def simulated_node(sim: Simulation, node: NodeSpec, ctx, cfg: Config) -> NodeResult:
    """Sleep the node's work (in one-worker seconds) over its workers, from its last checkpoint if any; a
    checkpoint requested (SIGTERM, or resources.elastic's pause) saves the work done, a pause ends the run.
    A searched level's node reports its made-up validation losses as it goes (every worker, as Ray Train asks)."""
    work = sim.seconds(node, 1)
    losses = simulated_losses(cfg, node) if searches_level(cfg, node.level) else []
    done, slept, slices = resumed_work(ctx)
    validated = validations_done(losses, done / work if work else 1.0)
    ctx.progress(Progress(node=node.id, phase="train", step=round(1000 * done / work) if work else 0, total_steps=1000))
    checkpointed = False
    while done < work:
        share = min(SLICE_S * ctx.world_size, work - done)
        time.sleep(share / ctx.world_size)
        done, slept, slices = done + share, slept + share / ctx.world_size, slices + 1
        validated = report_validations(ctx, node, losses, validated, done / work, slices)
        ctx.progress(Progress(node=node.id, phase="train", step=round(1000 * done / work), total_steps=1000))
        if done < work and not checkpointed and ctx.checkpoint_requested():
            save_work(ctx, done, slept, slices)
            ctx.checkpoint_written(slices)
            checkpointed = True
            if ctx.pausing():
                return NodeResult(None, NodeMetrics(simulated_seconds=slept, world_size=ctx.world_size), [],
                                  paused_at=slices)
    report_validations(ctx, node, losses, validated, 1.0, slices)
    ctx.report({"done": True}, None)
    if sim.adapters == "real":
        adapter = real_shaped_adapter(cfg, seed=node.examples) if ctx.is_main else None
    else:
        adapter = AdapterState({"r": 1, "lora_alpha": 1, "use_rslora": False, "lora_dropout": 0.0,
                                "target_modules": ["q"]}, {"simulated": torch.tensor([float(node.examples)])})
    metrics = NodeMetrics(simulated_seconds=slept, examples=node.examples, world_size=ctx.world_size,
                          initial_val_loss=losses[0] if losses else None, val_loss=losses[-1] if losses else None)
    history = [HistoryPoint(v, val_loss=loss) for v, loss in enumerate(losses)]
    return NodeResult(adapter, metrics, history)


def report_validations(ctx, node: NodeSpec, losses: list[float], validated: int, share_done: float,
                       step: int) -> int:
    """Report the validations reached since the last call (val_loss, as a trained node reports them)."""
    due = validations_done(losses, share_done)
    for v in range(validated + 1, due + 1):
        ctx.report({"step": step, "val_loss": losses[v], "best_val_loss": losses[v]}, None)
        ctx.progress(Progress(node=node.id, phase="train", val_loss=losses[v]))
    return max(validated, due)


def resumed_work(ctx) -> tuple[float, float, int]:
    """(work done in one-worker seconds, seconds slept, slices) at the node's last checkpoint; zeros if none."""
    ckpt = ctx.latest_checkpoint()
    if ckpt is None or not (ckpt / PROGRESS_FILE).is_file():
        return 0.0, 0.0, 0
    saved = json.loads((ckpt / PROGRESS_FILE).read_text())
    return float(saved["done"]), float(saved["slept"]), int(saved["slices"])


def save_work(ctx, done: float, slept: float, slices: int) -> None:
    progress = json.dumps({"done": done, "slept": slept, "slices": slices})
    ctx.report_checkpoint({"step": slices}, lambda path: (path / PROGRESS_FILE).write_text(progress))
