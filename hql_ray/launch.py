"""Start one node as a Ray Train run (TorchTrainer, Train V2 API) and return its plain-dict result.

Used by the driver for every node and by hql_ray.tune for every trial.
"""

from __future__ import annotations

from dataclasses import dataclass

from hql_ray.errors import HQLError


@dataclass
class Slots:
    """What the cluster offers a run: `total` slots of GPUs (or CPUs when use_gpu is False)."""

    total: int
    use_gpu: bool
    real_cuda: bool  # False for logical GPU slots (tests, laptops): then gloo and the CPU device
    cpus_per_worker: float


def make_trainer(cfg_dict: dict, payload: dict, workers: int, refs: list, name: str, slots: Slots,
                 storage: str, board, *, simulate: dict | None = None, max_failures: int = 0,
                 callbacks: list | None = None):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hql_ray.ray_worker import node_train_loop

    per_worker = {"CPU": slots.cpus_per_worker}
    if slots.use_gpu:
        per_worker["GPU"] = 1
    return TorchTrainer(
        node_train_loop,
        train_loop_config={
            "config": cfg_dict,
            "node": payload,
            "parent_refs": refs,  # ObjectRefs: each worker ray.get()s its ancestors' adapters
            "board": board,
            "simulate": simulate,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=slots.use_gpu, resources_per_worker=per_worker),
        # Logical GPU slots without CUDA (tests, laptops) cannot use NCCL.
        torch_config=TorchConfig(backend="nccl" if slots.real_cuda else "gloo"),
        run_config=RunConfig(
            name=name,  # unique per launch: reusing a name would silently resume an old run
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )


def fit_node(cfg_dict: dict, payload: dict, workers: int, refs: list, name: str, slots: Slots, storage: str,
             board, *, simulate: dict | None = None, max_failures: int = 0) -> dict:
    trainer = make_trainer(cfg_dict, payload, workers, refs, name, slots, storage, board,
                           simulate=simulate, max_failures=max_failures)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.return_value is None:
        raise HQLError(f"node {payload['id']}: training returned nothing")
    return result.return_value
