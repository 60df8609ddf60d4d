"""The Ray side of a run's set-up: connect to (or start) Ray, count the slots, check the storage path."""

from __future__ import annotations

import os

import ray

from hql_ray.config import Config
from hql_ray.errors import ConfigError
from hql_ray.launch import Slots


def init_ray(cfg: Config) -> bool:
    """Connect to (or start) Ray; True if this call did, so the driver also shuts it down."""
    # Faster turn-around between nodes; the controller reads it from the driver's environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if ray.is_initialized():
        return False
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, log_to_driver=False)
    else:
        # A local Ray on one machine: no spot preemption to watch and no dashboard to feed, so spare
        # the extra actor processes Ray Train would start for every node.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        ray.init(address="local", num_gpus=cfg.resources.num_gpus, include_dashboard=False, log_to_driver=False)
    return True


def detect_slots(cfg: Config) -> Slots:
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    wanted = cfg.resources.num_gpus
    if wanted is not None and wanted > cluster_gpus:
        raise ConfigError(f"--num-gpus {wanted} but the Ray cluster has {cluster_gpus} GPU(s)")
    gpus = cluster_gpus if wanted is None else wanted
    if gpus > 0:
        cuda = _workers_have_cuda()
        # Logical GPU slots share the CPUs: a CPU per worker would cap concurrency at the CPU count.
        return Slots(gpus, True, cuda, cfg.resources.cpus_per_worker if cuda else 0.01)
    cpus = resources.get("CPU", 1)
    per = cfg.resources.cpus_per_worker
    total = cfg.resources.num_cpu_slots or max(1, int(cpus // per))
    return Slots(total, False, False, per)


_cuda_probe: bool | None = None


def _workers_have_cuda() -> bool:
    """Logical GPU slots (tests, laptops) have no CUDA behind them; ask a worker once."""
    global _cuda_probe
    if _cuda_probe is None:

        @ray.remote(num_gpus=1, num_cpus=0)
        def probe():
            import torch

            return torch.cuda.is_available()

        _cuda_probe = bool(ray.get(probe.remote()))
    return _cuda_probe


def check_storage(storage_path: str, explicit: bool) -> None:
    """A multi-node run needs storage every node can reach (S3/GCS URI or a shared mount)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and "://" not in storage_path and not explicit:
        raise ConfigError(
            f"this Ray cluster has {len(alive)} nodes but run.storage_path is the local folder {storage_path}; "
            "set run.storage_path to a URI every node can reach (s3://bucket/path) or to a shared NFS mount"
        )
