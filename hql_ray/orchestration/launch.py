"""Start one node as a Ray Train run (TorchTrainer, Train V2 API) and return its plain-dict result.

Used by the driver for every node and by hql_ray.orchestration.tune for every trial. Every run tells the run board
when it starts waiting for resources and when it is over (`run_fit`), so the driver can say what a
waiting run waits for and release what a killed run left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hql_ray.settings.errors import HQLError
from hql_ray.settings.records import NodeResult, NodeSpec


@dataclass
class Slots:
    """What the cluster offers a run: `total` slots of GPUs (or CPUs when use_gpu is False)."""

    total: int
    use_gpu: bool
    real_cuda: bool  # False for logical GPU slots (tests, laptops): then gloo and the CPU device
    cpus_per_worker: float


def per_worker_resources(slots: Slots) -> dict:
    per_worker = {"CPU": slots.cpus_per_worker}
    if slots.use_gpu:
        per_worker["GPU"] = 1
    return per_worker


def wait_limits(wait_timeout_s: float, max_failures: int) -> dict:
    """How long a run may wait for its workers' resources before it fails, in Ray Train's terms.

    Ray Train waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the placement group, then retries
    `controller_failure_limit` times (forever by default): the total wait is split over the attempts.
    0 keeps Ray's default (wait forever)."""
    if wait_timeout_s <= 0:
        return {"timeout_s": None, "controller_failure_limit": -1}
    attempts = max_failures + 1
    return {"timeout_s": wait_timeout_s / attempts, "controller_failure_limit": max_failures}


def ray_train_env() -> dict[str, str]:
    """This process's RAY_TRAIN_* settings (state tracking for the dashboard, metrics, health checks, ...).

    Ray Train reads them in the process that calls `fit()` and hands some on to the run's controller; a
    Tune trial calls `fit()` in its own actor, which on a cluster does not have the driver's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")}


@dataclass
class NodeJob:
    """One run of a node (a Ray Train run, one of its Tune trials, or a call to a warm worker): what it needs."""

    cfg: dict  # the run config as plain data (a trial's own values already in it)
    node: NodeSpec  # the node to train
    workers: int
    parent_refs: list  # ObjectRefs of the ancestors' adapters; each worker ray.get()s them
    name: str  # the Ray Train run name: unique under the storage path, or an old run would resume
    slots: Slots
    storage: str
    board: Any  # the RunBoard actor (a tune.TrialBoard inside a trial)
    simulate: dict | None = None
    max_failures: int = 0
    keeper: Any = None  # the run's AdapterKeeper: rank 0 hands it the adapter (None: returned, as in Tune trials)
    adapter_path: str | None = None  # where the keeper saves it (nodes/<id>/adapter in the run folder)
    evaluate_only: bool = False  # --resume after a failed evaluation: parent_refs end with the node's own adapter
    train_env: dict = field(default_factory=ray_train_env)  # the driver's, applied where fit() runs

    @property
    def wants(self) -> dict:
        return {"workers": self.workers, "per_worker": per_worker_resources(self.slots)}


def loop_config(job: NodeJob) -> dict:
    """What every worker of the node's run gets (`hql_ray.orchestration.ray_worker.run_node`): plain data and refs."""
    return {
        "config": job.cfg,
        "node": job.node,
        "parent_refs": job.parent_refs,
        "board": job.board,
        "simulate": job.simulate,
        "run": job.name,  # rank 0 tells the board which placement group this run holds
        "evaluate_only": job.evaluate_only,
        "keeper": job.keeper,
        "adapter_path": job.adapter_path,
    }


def make_trainer(job: NodeJob, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hql_ray.orchestration.ray_worker import node_train_loop

    for key, value in job.train_env.items():  # in a Tune trial's actor: the driver's settings
        os.environ.setdefault(key, value)
    limits = wait_limits(float(job.cfg["resources"]["wait_timeout_s"]), job.max_failures)
    if limits["timeout_s"] is not None:
        # Read by the run's controller, which gets it from this process's environment.
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{limits['timeout_s']:g}"
    return TorchTrainer(
        node_train_loop,
        train_loop_config=loop_config(job),
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.slots.use_gpu,
                                     resources_per_worker=per_worker_resources(job.slots)),
        # Logical GPU slots without CUDA (tests, laptops) cannot use NCCL.
        torch_config=TorchConfig(backend="nccl" if job.slots.real_cuda else "gloo"),
        run_config=RunConfig(
            name=job.name,
            storage_path=job.storage,
            # Older checkpoints go: a node only ever resumes from its latest.
            checkpoint_config=CheckpointConfig(num_to_keep=int(job.cfg["train"]["checkpoints_kept"])),
            failure_config=FailureConfig(max_failures=job.max_failures,
                                         controller_failure_limit=limits["controller_failure_limit"]),
            callbacks=callbacks,
        ),
    )


def run_fit(trainer, job: NodeJob, *, board=None, trial: str | None = None, owner=None):
    """`trainer.fit()`, with the run board (`board`, default the job's) told when the run starts waiting
    and when it is over. `owner` is the actor calling fit (a Tune trial); the board releases the run's
    placement group once that actor is dead, since a killed trial never reaches the `finally` below."""
    board = job.board if board is None else board
    if board is not None:
        board.run_waiting.remote(job.name, job.node.id, trial, job.wants, owner)
    try:
        return trainer.fit()
    finally:
        if board is not None:
            board.run_over.remote(job.name)


def fit_node(job: NodeJob) -> NodeResult:
    result = run_fit(make_trainer(job), job)
    if result.error is not None:
        raise result.error
    if result.return_value is None:
        raise HQLError(f"node {job.node.id}: training returned nothing")
    return result.return_value
