"""`hql-ray train --dry-run`: everything a run checks before Ray starts, and the plan, without Ray.

`make_plan` calls what the real start calls: the run folder's checks and -sv's precondition
(`run_model.check_run_folder`, `check_skips`), what it keeps of an earlier run (`run_model.growth_of`: a
grown tree, --retrain), the hand-off rule and the pre-flight data checks (`preflight.check`), and the run
model's schedule (`RunModel.replay`: its readiness rule and worker allocation on the given slots) and batch
plan (a node's steps). It then sizes each node's adapter (the real model's LoRA shapes on the meta device)
and GPU memory (`hql_ray.training.memory`, with the frozen ranks the hand-off rule gives). Problems are
collected, not raised, so the plan is printed as far as it can be.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.orchestration import preflight, run_model
from hql_ray.settings import search_space
from hql_ray.settings.config import Config
from hql_ray.settings.errors import ConfigError, HQLError
from hql_ray.settings.tree import load_tree
from hql_ray.training import memory

ASSUMED_PER_CORPUS = 31000  # examples per corpus and language assumed when the data cannot be read


@dataclass
class NodePlan:
    id: str
    depth: int
    languages: list[str]
    examples: int | None  # None: the data check failed
    steps: int | None
    workers: int | None  # None: not trained in this run (skipped, or done and kept by --resume)
    grows_to: list[int] = field(default_factory=list)  # resources.elastic: the counts it goes on on, in turn
    status: str = "train"  # train | skipped | done
    adapter: dict | None = None  # {"params", "bytes"}
    memory: dict | None = None  # hql_ray.training.memory.node_memory's bytes by part and "total"


@dataclass
class Plan:
    run_dir: Path
    base: str
    mode: str
    slots: int
    slot_kind: str  # "GPU" or "CPU"
    nodes: list[NodePlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- slots ----------------------------------------------------------------------------------------
def plan_slots(cfg: Config, slots: int | None, notes: list[str]) -> tuple[int, str]:
    """--slots, else the slots a local run here would get (`run_model.count_slots` on this machine's GPUs and
    CPUs, as `cluster.detect_slots` counts a cluster's)."""
    res = cfg.resources
    if slots is not None:
        return slots, "CPU" if res.num_gpus == 0 else "GPU"
    if res.address and res.num_gpus is None:
        notes.append(f"resources.address is {res.address}: the cluster's GPUs are unknown without Ray; "
                     "give --slots (or --num-gpus) to plan for them")
    try:
        local = run_model.local_slots(cfg)
    except ConfigError:  # --num-gpus N here without N GPUs: plan for N, as the cluster would give them
        return res.num_gpus, "GPU"
    if not local.use_gpu and res.num_gpus is None and not res.address:
        notes.append("resources.num_gpus is unset and no GPU is visible here: planned on CPU slots, as a "
                     "local run here would train (--num-gpus N or --slots N plans for N GPUs)")
    return local.total, local.kind


# ---- adapter size and memory --------------------------------------------------------------------
def base_config(cfg: Config):
    """The base model's config without weights or network, or None when it is not known here."""
    try:
        return memory.base_model_config(cfg.model.base, cfg.models_dir)
    except Exception:  # noqa: BLE001 - not in the local cache, or not a model: "unknown"
        return None


def adapter_size(cfg: Config, model_config) -> dict | None:
    """Parameters and bytes (fp32, as saved) of one node's trainable part: its LoRA (model.lora on the
    real shapes, built on the meta device), or the whole model with model.mode fft."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' own deprecations, not the user's
        if cfg.model.mode == "fft":
            with torch.device("meta"):
                model = AutoModelForSeq2SeqLM.from_config(model_config)
            params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        else:
            lora, targets = cfg.model.lora, tuple(cfg.model.lora.target_modules)
            try:  # by name: cached, and the GPU memory estimate reuses it (one meta build, not two)
                shapes = memory.shapes(cfg.model.base, targets)
            except Exception:  # noqa: BLE001 - a base memory cannot name: from the config found here
                shapes = memory.shapes_of(model_config, targets)
            params = lora.r * shapes.lora_per_rank
    return {"params": int(params), "bytes": int(params) * 4}


def memory_estimator(activations: bool = False):
    """(cfg, frozen ancestor ranks) -> GPU bytes by part and "total" (`memory.node_memory`): the static part
    only unless `activations` (measured on the meta device: 20-60 s per depth for mT5-large)."""
    return lambda cfg, ranks: memory.node_memory(cfg, ranks, activations=activations)


# ---- the plan --------------------------------------------------------------------------------------
def make_plan(cfg: Config, slots: int | None = None, activations: bool = False) -> Plan:
    """Every check the real start makes before Ray (the same functions: `run_model`, `preflight`), and the
    plan; raises only when there is no tree to plan."""
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    skipped = tree.skip_nodes(cfg.tree.skip)
    search_space.check_levels(cfg.tune, tree.levels)
    notes: list[str] = []
    total, kind = plan_slots(cfg, slots, notes)
    plan = Plan(cfg.run_dir.absolute(), cfg.model.base, cfg.model.mode, total, kind, notes=notes)
    old = _check(plan, lambda: run_model.check_run_folder(cfg, tree, skipped))
    _check(plan, lambda: run_model.check_skips(tree, skipped, old, cfg.run_dir.absolute()))
    model = _check(plan, lambda: run_model.RunModel(cfg, tree))
    sizes = _check(plan, lambda: preflight.check(cfg, tree, skipped=skipped))
    known = sizes is not None
    if not known:
        corpora = len(cfg.data.corpora or ("amr3", "flores"))
        per = cfg.data.max_train_per_corpus or ASSUMED_PER_CORPUS
        sizes = {n.id: len(n.languages) * corpora * per for n in tree.nodes.values()}
        plan.notes.append(f"examples unknown (the data check failed): workers planned as if every corpus gave "
                          f"{per} examples per language")
    grown = _check(plan, lambda: run_model.growth_of(cfg, tree, skipped, old)) if old is not None else None
    kept = set(grown.kept) if grown is not None else set()
    if grown is not None and grown.grows:
        plan.notes.append(growth_note(grown))
    counts = model.replay(sizes, total, kept | skipped) if model is not None else {}
    adapter = _adapter(plan, cfg)
    if cfg.train.batch_tokens:
        plan.notes.append("steps ?: with train.batch_tokens an epoch's steps follow its examples' token counts, "
                          "known when a node tokenizes its data (the same BatchPlan then counts them)")
    for node in tree.nodes.values():
        w, *grows = counts.get(node.id) or [None]
        state = "skipped" if node.id in skipped else "done" if node.id in kept else "train"
        steps = model.batch_plan(sizes[node.id], w).total_steps if known and w and model else None
        plan.nodes.append(NodePlan(node.id, node.depth, node.codes, sizes[node.id] if known else None, steps,
                                   w if state == "train" else None, grows, state, adapter))
    if model is not None:
        _memory(plan, model, activations)
    return plan


def growth_note(grown) -> str:
    """What the start keeps of the earlier run and trains anew (`run_model.growth_of`), in words."""
    def listed(ids) -> str:
        return f" ({', '.join(ids)})" if ids else ""
    where = "in place" if grown.in_place else f"from {grown.source} (hard-linked into the new run folder)"
    return (f"grows the earlier run {where}: {len(grown.kept)} finished node(s) kept as they are, "
            f"{len(grown.new)} new{listed(grown.new)}, {len(grown.retrain)} trained again{listed(grown.retrain)}"
            + (f"; languages added: {', '.join(grown.added)}" if grown.added else ""))


def _check(plan: Plan, fn):
    try:
        return fn()
    except HQLError as err:
        plan.problems.append(str(err))
        return None


def _adapter(plan: Plan, cfg: Config) -> dict | None:
    model_config = base_config(cfg)
    if model_config is None:
        plan.notes.append(f"adapter size unknown: no config for {cfg.model.base} here (not a built-in base, "
                          "a local folder, or in the Hugging Face cache)")
        return None
    return adapter_size(cfg, model_config)


def _memory(plan: Plan, model: run_model.RunModel, activations: bool) -> None:
    estimate = memory_estimator(activations)
    plan.notes.append(
        "GPU memory per worker (hql_ray.training.memory, without the CUDA context): " + (
            "4-bit base, frozen ancestors, LoRA, gradients, optimizer and the activations' peak measured on "
            "the meta device (an upper bound)" if activations else
            "the static part only (4-bit base, frozen ancestors, LoRA, gradients, optimizer); "
            "--memory-activations adds the activations' peak (slow: measured per depth on the meta device)"))
    known: dict[tuple, dict | None] = {}  # the estimate depends on the node only through its frozen ranks
    for node in plan.nodes:
        if node.status != "train":
            continue
        ranks = tuple(model.frozen_ranks(node.id))
        if ranks not in known:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations
                    known[ranks] = estimate(model.cfg, list(ranks))
            except Exception as err:  # noqa: BLE001 - an estimate that fails must not hide the plan
                plan.notes.append(f"GPU memory with {len(ranks)} frozen ancestor(s): not estimated ({err})")
                known[ranks] = None
        node.memory = known[ranks]


# ---- printing --------------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def render(plan: Plan) -> str:
    """The plan as the terminal shows it: a header, one row per node, then notes and problems."""
    lines = [f"run folder: {plan.run_dir}",
             f"base: {plan.base} ({plan.mode}); {plan.slots} {plan.slot_kind} slot(s)"]
    header = ["node", "languages", "examples", "steps", "workers", "adapter", "GPU memory"]
    rows = [header]
    for n in plan.nodes:
        langs = ", ".join(n.languages) if len(n.languages) <= 3 else f"{len(n.languages)} ({n.languages[0]}, ...)"
        adapter = "unknown" if n.adapter is None else \
            f"{human_count(n.adapter['params'])} params, {human_bytes(n.adapter['bytes'])}"
        memory = "-" if n.memory is None else human_bytes(n.memory["total"])
        rows.append(["  " * n.depth + n.id, langs, "?" if n.examples is None else str(n.examples),
                     "?" if n.steps is None else str(n.steps),
                     n.status if n.workers is None else "->".join(map(str, [n.workers, *n.grows_to])),
                     adapter, memory])
    if all(n.memory is None for n in plan.nodes):
        rows = [r[:-1] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"problem: {p}" for p in plan.problems]
    lines.append(f"dry run: {len(plan.problems)} problem(s)" + (
        "; the run would stop there, before Ray starts" if plan.problems else "; nothing started (no Ray)"))
    return "\n".join(lines)
