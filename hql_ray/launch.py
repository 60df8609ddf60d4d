"""Start one node as a Ray Train run (TorchTrainer, Train V2 API) and return its plain-dict result.

Used by the driver for every node and by hql_ray.tune for every trial. Every run tells the run board
when it starts waiting for resources and when it is over (`run_fit`), so the driver can say what a
waiting run waits for and release what a killed run left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hql_ray.errors import HQLError


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


def make_trainer(cfg_dict: dict, payload: dict, workers: int, refs: list, name: str, slots: Slots,
                 storage: str, board, *, simulate: dict | None = None, max_failures: int = 0,
                 callbacks: list | None = None):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hql_ray.ray_worker import node_train_loop

    limits = wait_limits(float(cfg_dict["resources"]["wait_timeout_s"]), max_failures)
    if limits["timeout_s"] is not None:
        # Read by the run's controller, which gets it from this process's environment.
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{limits['timeout_s']:g}"
    per_worker = per_worker_resources(slots)
    return TorchTrainer(
        node_train_loop,
        train_loop_config={
            "config": cfg_dict,
            "node": payload,
            "parent_refs": refs,  # ObjectRefs: each worker ray.get()s its ancestors' adapters
            "board": board,
            "simulate": simulate,
            "run": name,  # rank 0 tells the board which placement group this run holds
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=slots.use_gpu, resources_per_worker=per_worker),
        # Logical GPU slots without CUDA (tests, laptops) cannot use NCCL.
        torch_config=TorchConfig(backend="nccl" if slots.real_cuda else "gloo"),
        run_config=RunConfig(
            name=name,  # unique per launch: reusing a name would silently resume an old run
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures,
                                         controller_failure_limit=limits["controller_failure_limit"]),
            callbacks=callbacks,
        ),
    )


def run_fit(trainer, board, run: str, node_id: str, wants: dict, *, trial: str | None = None, owner=None):
    """`trainer.fit()`, with the board told when the run starts waiting and when it is over.

    `owner` is the actor calling fit (a Tune trial); the board releases the run's placement group once
    that actor is dead, since a killed trial never reaches the `finally` below."""
    if board is not None:
        board.run_waiting.remote(run, node_id, trial, wants, owner)
    try:
        return trainer.fit()
    finally:
        if board is not None:
            board.run_over.remote(run)


def fit_node(cfg_dict: dict, payload: dict, workers: int, refs: list, name: str, slots: Slots, storage: str,
             board, *, simulate: dict | None = None, max_failures: int = 0) -> dict:
    trainer = make_trainer(cfg_dict, payload, workers, refs, name, slots, storage, board,
                           simulate=simulate, max_failures=max_failures)
    result = run_fit(trainer, board, name, payload["id"], {"workers": workers, "per_worker": per_worker_resources(slots)})
    if result.error is not None:
        raise result.error
    if result.return_value is None:
        raise HQLError(f"node {payload['id']}: training returned nothing")
    return result.return_value
