"""A node's launch as a Ray Train run (TorchTrainer, Train V2 API): `make_trainer`, `fit_node`.

The job (`hql_ray.orchestration.job.NodeJob`) crosses into every worker as itself
(`train_loop_config={"job": job}`). Used by the driver for every node and by `tune` for every trial.
Every run tells the run board when it starts waiting for resources and when it is over (`run_fit`), so
the driver can say what a waiting run waits for and release what a killed run left behind.
"""

from __future__ import annotations

import os

from hql_ray.orchestration.job import NodeJob
from hql_ray.orchestration.ray_worker import node_train_loop
from hql_ray.settings.errors import HQLError
from hql_ray.settings.records import NodeResult


def wait_limits(wait_timeout_s: float, max_failures: int) -> dict:
    """How long a run may wait for its workers' resources before it fails, in Ray Train's terms.

    Ray Train waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the placement group, then retries
    `controller_failure_limit` times (forever by default): the total wait is split over the attempts.
    0 keeps Ray's default (wait forever)."""
    if wait_timeout_s <= 0:
        return {"timeout_s": None, "controller_failure_limit": -1}
    attempts = max_failures + 1
    return {"timeout_s": wait_timeout_s / attempts, "controller_failure_limit": max_failures}


def make_trainer(job: NodeJob, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from hql_ray.orchestration.controller import trainer_class

    for key, value in job.train_env.items():  # in a Tune trial's actor: the driver's settings
        os.environ.setdefault(key, value)
    limits = wait_limits(job.cfg.resources.wait_timeout_s, job.max_failures)
    if limits["timeout_s"] is not None:
        # Read by the run's controller, which gets it from this process's environment.
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{limits['timeout_s']:g}"
    return trainer_class()(  # TorchTrainer, its controller class made once per process
        node_train_loop,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.slots.use_gpu,
                                     resources_per_worker=job.slots.per_worker),
        # Logical GPU slots without CUDA (tests, laptops) cannot use NCCL.
        torch_config=TorchConfig(backend="nccl" if job.slots.real_cuda else "gloo"),
        run_config=RunConfig(
            name=job.name,
            storage_path=job.storage,
            # Older checkpoints go: a node only ever resumes from its latest.
            checkpoint_config=CheckpointConfig(num_to_keep=job.cfg.train.checkpoints_kept),
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
