"""One launch of a node, as a record: `NodeJob`, what the driver hands a Ray Train run, a warm worker's call
or a Tune trial, and what crosses into every worker as itself: the run config, the node, the refs of the
adapters it starts from, what to do (`work`: train, re-evaluate, simulate) and where results go.

A node's run name is stable across launches of the same run (`run_name`): a launch after a lost driver
or head continues from the checkpoints the earlier one left in the run's storage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hql_ray.orchestration.run_model import Slots
from hql_ray.settings.config import Config
from hql_ray.settings.records import NodeSpec
from hql_ray.training.work import NodeWork, Train


def ray_train_env() -> dict[str, str]:
    """This process's RAY_TRAIN_* settings (state tracking for the dashboard, metrics, health checks, ...).

    Ray Train reads them in the process that calls `fit()` and hands some on to the run's controller; a
    Tune trial calls `fit()` in its own actor, which on a cluster does not have the driver's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")}


def run_name(node_id: str, run_id: str, work: NodeWork) -> str:
    """The Ray Train run name of a node's work in this run: the same at every launch, so that a relaunch
    (--resume after a lost driver) continues from its checkpoints; unique under a shared storage path."""
    return f"{node_id}.{work.kind}.{run_id}" if run_id else f"{node_id}.{work.kind}"


@dataclass
class NodeJob:
    """One launch of a node (a Ray Train run, one of its Tune trials, or a call to a warm worker)."""

    cfg: Config  # the run config (a trial's own values already in it)
    node: NodeSpec
    workers: int
    parent_refs: list  # ObjectRefs of the adapters it starts from; each worker ray.get()s them
    name: str  # the Ray Train run name (`run_name`)
    slots: Slots
    storage: str
    board: Any  # the RunBoard actor (a tune.TrialBoard inside a trial)
    work: NodeWork = field(default_factory=Train)
    max_failures: int = 0
    keeper: Any = None  # the run's AdapterKeeper: rank 0 hands it the adapter (None: returned with the result)
    adapter_path: str | None = None  # where the keeper saves it (nodes/<id>/adapter in the run folder)
    train_env: dict = field(default_factory=ray_train_env)  # the driver's, applied where fit() runs
    searches: Any = None  # the run's search_state.Searches actor (a searched level's trials)

    @property
    def wants(self) -> dict:
        return {"workers": self.workers, "per_worker": self.slots.per_worker}
