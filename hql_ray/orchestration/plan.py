"""`hql-ray train --dry-run`: everything a run checks before Ray starts, and the plan, without Ray.

`make_plan` reads the tree, checks the run folder (`check_run_folder`, also called by the real run
before anything else), runs the pre-flight data checks (`preflight.check`), replays the driver's
scheduling on the given slots (`scheduling.allocate_workers`, a child ready once its parent is done)
and sizes each node: examples, optimizer steps, workers, its adapter (the real model's LoRA shapes
on the meta device, as `simulate.lora_shapes`) and its GPU memory (`hql_ray.training.memory`).
Problems are collected, not raised, so that the plan is printed as far as it can be.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.orchestration import preflight
from hql_ray.settings import search_space
from hql_ray.settings.config import TINY_BASES, Config
from hql_ray.settings.errors import ConfigError, HQLError
from hql_ray.orchestration.scheduling import allocate_workers, max_workers
from hql_ray.settings.tree import LanguageTree, load_tree

ASSUMED_PER_CORPUS = 31000  # examples per corpus and language assumed when the data cannot be read


@dataclass
class NodePlan:
    id: str
    depth: int
    languages: list[str]
    examples: int | None  # None: the data check failed
    steps: int | None
    workers: int | None  # None: not trained in this run (skipped, or done and kept by --resume)
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


# ---- the run folder ---------------------------------------------------------------------------------
def check_run_folder(cfg: Config, tree: LanguageTree, skipped: set[str]) -> dict[str, str]:
    """What the driver's manifest check refuses, said before Ray (or any model, or the data check) starts:
    an existing run without --resume (or -sv), or a --resume of another tree. -> node id -> status
    already in the folder ({} when there is none)."""
    path = cfg.run_dir.absolute() / "manifest.json"
    if not path.exists():
        return {}
    from hql_ray.outputs.manifest import Manifest

    old = Manifest.load(path)
    if not cfg.run.resume and not skipped:
        done = [n for n, v in old.nodes.items() if v.status == "done"]
        raise ConfigError(f"run folder {cfg.run_dir.absolute()} already holds a run ({len(done)} node(s) done); "
                          "add --resume to continue it, or choose another run name (-sn)")
    if set(old.nodes) != set(tree.nodes):
        raise ConfigError(f"--resume: {path} was made for a different tree ({old.data['tree']})")
    return {n: v.status for n, v in old.nodes.items()}


# ---- slots ----------------------------------------------------------------------------------------
def plan_slots(cfg: Config, slots: int | None, notes: list[str]) -> tuple[int, str]:
    """Slots as `cluster.detect_slots` would count them, without Ray: --slots, else resources.num_gpus,
    else the GPUs visible here; with no GPU, resources.num_cpu_slots or this machine's CPUs."""
    res = cfg.resources
    if slots is not None:
        return slots, "CPU" if res.num_gpus == 0 else "GPU"
    gpus = res.num_gpus
    if gpus is None:
        if res.address:
            notes.append(f"resources.address is {res.address}: the cluster's GPUs are unknown without Ray; "
                         "give --slots (or --num-gpus) to plan for them")
        gpus = _visible_gpus()
        if not gpus and not res.address:
            notes.append("resources.num_gpus is unset and no GPU is visible here: planned on CPU slots, as a "
                         "local run here would train (--num-gpus N or --slots N plans for N GPUs)")
    if gpus > 0:
        return gpus, "GPU"
    return res.num_cpu_slots or max(1, int((os.cpu_count() or 1) // res.cpus_per_worker)), "CPU"


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---- examples, steps, workers -------------------------------------------------------------------
def steps_for(cfg: Config, examples: int, workers: int) -> int:
    """Optimizer steps of a node, as node.setup counts them (length-grouped batches cut each mega-batch
    into whole batches, so an epoch is ceil(examples / global batch) steps)."""
    batch = cfg.train.batch_size * (workers if cfg.train.batch_per_worker else 1)
    total = max(1, math.ceil(cfg.train.epochs * math.ceil(examples / batch)))
    return min(total, cfg.train.max_steps) if cfg.train.max_steps else total


def schedule(cfg: Config, tree: LanguageTree, sizes: dict[str, int], slots: int, finished: set[str]) -> dict[str, int]:
    """Replay the driver: ready nodes (parent done; with resources.level_barrier, every shallower node
    done) share the free slots by `allocate_workers`; a node takes examples x epochs / workers.
    -> node id -> workers, for the nodes not in `finished`."""
    done, running, out, now = set(finished), {}, {}, 0.0
    pending = [n for n in tree.nodes if n not in done]
    while pending or running:
        open_depths = {tree.nodes[n].depth for n in pending} | {tree.nodes[n].depth for n in running}
        ready = [n for n in pending
                 if (tree.nodes[n].parent is None or tree.nodes[n].parent in done)
                 and not (cfg.resources.level_barrier and any(d < tree.nodes[n].depth for d in open_depths))]
        free = slots - sum(w for _, w in running.values())
        alloc = allocate_workers([(n, sizes[n]) for n in ready], free, max_workers(cfg),
                                 cfg.resources.min_examples_per_worker)
        for node_id, workers in alloc.items():
            running[node_id] = (now + sizes[node_id] * cfg.train.epochs / workers, workers)
            out[node_id] = workers
            pending.remove(node_id)
        if not running:  # nothing can start: a node whose parent is not trained and not done
            break
        node_id = min(running, key=lambda n: running[n][0])
        now = running.pop(node_id)[0]
        done.add(node_id)
    return out


# ---- adapter size and memory --------------------------------------------------------------------
def base_config(cfg: Config):
    """The base model's config without weights or network, or None when it is not known here."""
    from hql_ray.training import memory

    try:
        return memory.base_model_config(cfg.model.base, cfg.models_dir)
    except Exception:  # noqa: BLE001 - not in the local cache, or not a model: "unknown"
        return None


def adapter_size(cfg: Config, model_config) -> dict | None:
    """Parameters and bytes (fp32, as saved) of one node's trainable part: its LoRA (model.lora on the
    real shapes, built on the meta device), or the whole model with model.mode fft."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from hql_ray.training import memory

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
    from hql_ray.training.memory import node_memory  # torch and transformers: only when a plan is made

    return lambda cfg, ranks: node_memory(cfg, ranks, activations=activations)


# ---- the plan --------------------------------------------------------------------------------------
def make_plan(cfg: Config, slots: int | None = None, activations: bool = False) -> Plan:
    """Every check that needs no Ray, and the plan; raises only when there is no tree to plan."""
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    skipped = tree.skip_nodes(cfg.tree.skip)
    search_space.check_levels(cfg.tune, tree.levels)
    notes: list[str] = []
    total, kind = plan_slots(cfg, slots, notes)
    plan = Plan(cfg.run_dir.absolute(), cfg.model.base, cfg.model.mode, total, kind, notes=notes)
    status = _check(plan, lambda: check_run_folder(cfg, tree, skipped)) or {}
    sizes = _check(plan, lambda: preflight.check(cfg, tree, skipped=skipped))
    if sizes is None:
        corpora = len(cfg.data.corpora or ("amr3", "flores"))
        per = cfg.data.max_train_per_corpus or ASSUMED_PER_CORPUS
        sizes = {n.id: len(n.languages) * corpora * per for n in tree.nodes.values()}
        plan.notes.append(f"examples unknown (the data check failed): workers planned as if every corpus gave "
                          f"{per} examples per language")
        known = False
    else:
        known = True
    kept = {n for n, s in status.items() if cfg.run.resume and s == "done"}
    workers = schedule(cfg, tree, sizes, total, kept | skipped)
    adapter = _adapter(plan, cfg)
    for node in tree.nodes.values():
        w = workers.get(node.id)
        state = "skipped" if node.id in skipped else "done" if node.id in kept else "train"
        plan.nodes.append(NodePlan(
            node.id, node.depth, node.codes, sizes[node.id] if known else None,
            steps_for(cfg, sizes[node.id], w) if known and w else None, w if state == "train" else None, state))
    _memory(plan, cfg, tree, activations)
    for node in plan.nodes:
        node.adapter = adapter
    return plan


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


def frozen_ranks(cfg: Config, tree: LanguageTree, node_id: str) -> list[int]:
    """Ranks of the ancestors' adapters a node holds frozen beside its own: every ancestor's in stack mode;
    none with merge (merged into the base), continue (the parent's adapter is the one trained) or fft."""
    if cfg.model.handoff != "stack" or cfg.model.mode == "fft":
        return []
    return [cfg.model.lora.r] * len(tree.ancestors(node_id))


def _memory(plan: Plan, cfg: Config, tree: LanguageTree, activations: bool) -> None:
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
        ranks = tuple(frozen_ranks(cfg, tree, node.id))
        if ranks not in known:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations
                    known[ranks] = estimate(cfg, list(ranks))
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
                     "?" if n.steps is None else str(n.steps), n.status if n.workers is None else str(n.workers),
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
