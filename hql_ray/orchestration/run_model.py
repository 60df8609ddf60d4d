"""One model of a run, shared by the driver and `hql-ray train --dry-run`, so the plan cannot drift from the run.

Pure functions and one class over the config, the tree and the run folder's record; no Ray:
- `check_run_folder`: what an existing run folder allows (a new run, --resume, -sv, --grow), `growth_of`:
  what a start keeps of the earlier run and trains anew (a grown tree, --retrain), and `check_skips`:
  -sv's precondition (a skipped node below which nodes train must be done in the folder already);
- `count_slots`: the slots a run trains on, from what the cluster (or this machine) offers;
- `RunModel`: each node's facts computed once from the tree and the hand-off rule (whose adapters it
  starts from, whether its children start from its own, the languages it finishes), the readiness rule,
  the workers a ready node gets (resources.policy, a class of `scheduling.POLICIES`; `replay`: the same
  policy without Ray, for the dry run), a node's steps (`BatchPlan`), and which finished adapters a node
  still to run needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typing import Mapping

from hql_ray.data.batch_plan import BatchPlan
from hql_ray.orchestration import growth
from hql_ray.orchestration import replay as replay_lib
from hql_ray.orchestration import scheduling
from hql_ray.outputs.manifest import Manifest, RUN_STARTING, read_manifest
from hql_ray.settings.config import Config
from hql_ray.settings.errors import ConfigError
from hql_ray.settings.handoffs import handoff_for
from hql_ray.settings.tree import LanguageTree

FINISHED = ("done", "skipped")


# ---- slots -----------------------------------------------------------------------------------------
@dataclass
class Slots:
    """What the cluster offers a run: `total` slots of GPUs (or CPUs when use_gpu is False)."""

    total: int
    use_gpu: bool
    real_cuda: bool  # False for logical GPU slots (tests, laptops): then gloo and the CPU device
    cpus_per_worker: float

    @property
    def kind(self) -> str:
        return "GPU" if self.use_gpu else "CPU"

    @property
    def per_worker(self) -> dict:
        """One worker's Ray resources."""
        return {"CPU": self.cpus_per_worker, **({"GPU": 1} if self.use_gpu else {})}


def count_slots(cfg: Config, gpus: int, cpus: float, cuda: bool) -> Slots:
    """The run's slots from what is there (`gpus`, `cpus`; `cuda`: whether the GPUs are real): GPUs when any
    (resources.num_gpus of them, when set), else CPU slots (resources.num_cpu_slots, else CPUs per worker)."""
    res = cfg.resources
    if res.num_gpus is not None and res.num_gpus > gpus:
        raise ConfigError(f"--num-gpus {res.num_gpus} but the Ray cluster has {gpus} GPU(s)")
    wanted = gpus if res.num_gpus is None else res.num_gpus
    if wanted > 0:  # logical GPU slots share the CPUs: a CPU per worker would cap concurrency at the CPU count
        return Slots(wanted, True, cuda, res.cpus_per_worker if cuda else 0.01)
    return Slots(res.num_cpu_slots or max(1, int(cpus // res.cpus_per_worker)), False, False, res.cpus_per_worker)


def local_slots(cfg: Config) -> Slots:
    """The slots a local run here would get, counted without Ray (the dry run)."""
    import torch  # the dry run's only look at the hardware

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count_slots(cfg, gpus, float(os.cpu_count() or 1), cuda=gpus > 0)


# ---- the run folder ---------------------------------------------------------------------------------
def check_run_folder(cfg: Config, tree: LanguageTree, skipped: set[str]) -> Manifest | None:
    """The run that this start continues: the one in cfg's run folder (--resume, or -sv reusing its adapters),
    or --grow's earlier run folder when cfg's is new; None for a new run. Refused: an existing run without
    --resume or -sv, and a tree that does not fit the earlier run's finished nodes (`growth.plan_growth`:
    a language removed or moved). A record left by a start that failed before any node trained does not
    count: the corrected command runs."""
    run_dir = cfg.run_dir.absolute()
    path = run_dir / "manifest.json"
    old = Manifest.load(path) if path.exists() else None
    if old is not None and old.data.get("status") == RUN_STARTING and all(
            n.status == "pending" or n.reused_from for n in old.nodes.values()):
        old = None
    source = growth.source_folder(cfg)
    if old is not None and not cfg.run.resume and not skipped and source != run_dir:
        done = [n for n, v in old.nodes.items() if v.status == "done"]
        raise ConfigError(f"run folder {run_dir} already holds a run ({len(done)} node(s) done); "
                          "add --resume to continue it, or choose another run name (-sn)")
    if old is None and source is not None:
        old = read_manifest(source)  # (InputError: not a run folder)
    if old is None and cfg.tree.retrain:
        raise ConfigError(growth.RETRAIN_NEEDS_RUN)
    if old is not None:
        growth.plan_growth(cfg, tree, skipped, old)  # refused here (and by the dry run) if the tree does not fit
    return old


def growth_of(cfg: Config, tree: LanguageTree, skipped: set[str], old: Manifest | None) -> growth.Growth | None:
    """What this start keeps of the run `check_run_folder` found (None for a new run): its finished nodes
    reused as they are, the new nodes, the nodes trained again. The start and the dry run both ask this."""
    return None if old is None else growth.plan_growth(cfg, tree, skipped, old)


def check_skips(tree: LanguageTree, skipped: set[str], old: Manifest | None, run_dir: Path) -> None:
    """-sv: a skipped node that a node of this run starts from must be done in the run folder already (its
    adapter is read from there, as with --resume; with --grow, in the earlier run folder)."""
    run_dir = old.path.parent if old is not None else run_dir
    for node_id in tree.needed_skips(skipped):
        entry = old.nodes[node_id] if old is not None else None
        if entry is None or entry.status != "done" or not entry.adapter or not (run_dir / entry.adapter).is_dir():
            raise ConfigError(f"tree.skip (-sv): node {node_id} is skipped, but nodes below it train in this run "
                              f"and {run_dir} holds no finished adapter of it; train it first "
                              "(leave it out of -sv) or skip its descendants too")


# ---- the nodes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeFacts:
    """What the tree and the hand-off rule say of a node, computed once per run."""

    chain: tuple[str, ...]  # whose adapters it starts from (root first)
    model_chain: tuple[str, ...]  # whose adapters its trained model holds, itself last: what a re-evaluation
    #                               loads and what the languages it finishes export
    hands_on: bool  # whether a child starts from its own adapter
    leaf_codes: tuple[str, ...]  # the languages whose last node it is (exported from it)


class RunModel:
    """The tree as a run walks it: who starts from whom, who is ready, who gets how many workers."""

    def __init__(self, cfg: Config, tree: LanguageTree):
        self.cfg, self.tree, self.rule = cfg, tree, handoff_for(cfg)
        self.facts: dict[str, NodeFacts] = {node_id: self._facts(node_id) for node_id in tree.nodes}
        # resources.policy as the driver can follow it: a node keeps its workers to its end (no growth), and a
        # running node counts with all its work (the driver does not track its progress)
        self.policy = scheduling.WithoutProgress(scheduling.policy_for(cfg, elastic=False))
        # resources.elastic: the same policy asked which running nodes grow, from their progress on the board
        self.elastic_policy = scheduling.policy_for(cfg, elastic=True) if cfg.resources.elastic else None

    def _facts(self, node_id: str) -> NodeFacts:
        ancestors = [a.id for a in self.tree.ancestors(node_id)]
        chain = tuple(self.rule.handed_on(ancestors))
        own_chain = self.rule.handed_on(ancestors + [node_id])
        children = self.tree.children_of(node_id)
        codes = tuple(lang.code for lang in self.tree.languages if self.tree.leaf_for(lang.code).id == node_id)
        return NodeFacts(chain, tuple(self.rule.evaluation_parents(list(chain))) + (node_id,),
                         bool(children) and node_id in own_chain, codes)

    def chain(self, node_id: str) -> list[str]:
        return list(self.facts[node_id].chain)

    def frozen_ranks(self, node_id: str) -> list[int]:
        """Ranks of the adapters a node holds frozen beside its own (the memory estimate)."""
        return self.rule.frozen_ranks([self.cfg.model.lora.r] * len(self.facts[node_id].chain))

    def batch_plan(self, examples: int, workers: int) -> BatchPlan:
        return BatchPlan.of(self.cfg.train, examples, workers)

    def ready(self, status: dict[str, str], running: set[str], failed: set[str]) -> list[str]:
        """Pending nodes whose parent is done (with resources.level_barrier: every shallower node finished)."""
        open_depths = {self.tree.nodes[n].depth for n, s in status.items() if s not in FINISHED}
        out = []
        for node_id, node in self.tree.nodes.items():
            if status[node_id] != "pending" or node_id in running or node_id in failed:
                continue
            if self.cfg.resources.level_barrier and any(d < node.depth for d in open_depths):
                continue
            if node.parent is None or status[node.parent] == "done":
                out.append(node_id)
        return out

    def allocate(self, ready: list[str], sizes: dict[str, int], free_slots: int,
                 running: Mapping[str, int] | None = None) -> dict[str, int]:
        """Workers for ready nodes on the free slots, as resources.policy decides ({} when none fits); the rest
        wait for a slot. `running`: the nodes training now -> their workers."""
        if free_slots <= 0 or not ready:
            return {}
        view = self._view(sizes, ready, free_slots, running or {})
        return {n: span.min for n, span in self.policy.decide(view).launches.items()}

    def resizes(self, sizes: dict[str, int], free_slots: int, running: Mapping[str, int],
                done_share: Mapping[str, float], resizable: set[str]) -> dict[str, int]:
        """resources.elastic, when no ready node waits: running nodes to go on on more workers -> their new
        count. `done_share`: the share of its steps each running node has done (from the board); `resizable`:
        those that may pause now (a checkpoint is written on request, so each counts as at one)."""
        if self.elastic_policy is None or free_slots <= 0 or not resizable:
            return {}
        view = self._view(sizes, [], free_slots, running, done_share, resizable)
        return self.elastic_policy.decide(view).resizes

    def _view(self, sizes: dict[str, int], ready: list[str], free_slots: int, running: Mapping[str, int],
              done_share: Mapping[str, float] | None = None, resizable: set[str] = frozenset()
              ) -> scheduling.SchedulerView:
        loads = scheduling.tree_loads(self.cfg, self.tree, sizes)
        left = {n: loads[n].work * (1 - (done_share or {}).get(n, 0.0)) for n in running}
        return scheduling.SchedulerView(
            [loads[n] for n in ready], [scheduling.Running(loads[n], w, left[n], n in resizable)
                                        for n, w in running.items()],
            free_slots, free_slots + sum(running.values()))

    def needed(self, status: dict[str, str], failed: set[str], evaluate: set[str]) -> set[str]:
        """Done nodes whose adapters a node that may still run (or be scored again) starts from."""
        out: set[str] = set()
        for node_id, state in status.items():
            if state in ("done", "failed", "skipped") or node_id in failed:
                continue
            if any(a.id in failed for a in self.tree.ancestors(node_id)):
                continue
            out.update(a for a in self.facts[node_id].chain if status[a] == "done")
        for node_id in evaluate:
            out.update(self.facts[node_id].model_chain)
        return out

    def replay(self, sizes: dict[str, int], slots: int, finished: set[str]) -> dict[str, list[int]]:
        """The schedule without Ray (`replay_lib`, the same policy as `allocate`, its readiness and level
        barrier): a node takes examples x epochs / workers; -> the workers of each node not in `finished`, the
        count it starts on first, then each count resources.elastic grows it to (at a log step, where the
        driver pauses a node; a restart costs `scheduling.RESIZE_COST`, as the policy weighs it)."""
        todo = [n for n in self.tree.nodes if n not in finished]
        parents = {n: self.tree.nodes[n].parent for n in todo}
        parents = {n: p if p in parents else None for n, p in parents.items()}  # a finished parent: a root now
        loads = scheduling.tree_loads(self.cfg, self.tree, sizes)
        loads = scheduling.node_loads({n: loads[n].work for n in todo}, parents,
                                      {n: min(slots, loads[n].max_workers) for n in todo}, sizes)
        costs = None if self.elastic_policy is None else replay_lib.Costs(
            checkpoint_work=self.cfg.train.log_every * self.cfg.train.batch_size, resize_cost=scheduling.RESIZE_COST)
        result = replay_lib.replay(loads, parents, slots, self.elastic_policy or self.policy, costs,
                                   barrier=self.cfg.resources.level_barrier,
                                   depths={n: self.tree.nodes[n].depth for n in todo})
        return result.workers
