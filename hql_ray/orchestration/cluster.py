"""The Ray side of a run's set-up: connect to (or start) Ray, count the slots, check the storage path."""

from __future__ import annotations

import logging
import os
import sys

import ray

from hql_ray.settings.config import Config
from hql_ray.settings.errors import ConfigError
from hql_ray.orchestration.run_model import Slots, count_slots


STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"  # Ray Train V2: runs recorded for the dashboard's Train view
# Ray's notice that a local Ray turned token authentication on, at every start (a WARNING): shown with -v only.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def wants_verbose(verbose: bool | None = None) -> bool:
    """`hql-ray train -v` sets the root logger to INFO (commands/train.py); that is the switch when the
    caller does not say."""
    if verbose is not None:
        return bool(verbose)
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def ray_settings(cfg: Config, verbose: bool | None = None) -> tuple[dict, dict]:
    """(ray.init keyword arguments, environment defaults for this process) for a run.

    - Workers' logs reach the driver's output only with -v (`log_to_driver`).
    - Ray Train's state tracking (each node's run in the dashboard's Train view) is on wherever there is a
      dashboard: always on a cluster, and on a local Ray with -v, which then also starts the dashboard.
      The trainer reads it when `fit()` builds the controller's callbacks, i.e. in this process.
    - A local Ray without -v has no dashboard to feed nor spot preemption to watch: the extra actor
      processes Ray Train would start for every node are spared.
    - Ray's own INFO lines ("Started a local Ray instance", "Connecting to existing Ray cluster") only with -v.
    """
    verbose = wants_verbose(verbose)
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}  # faster turn-around between nodes
    if cfg.resources.address:
        env[STATE_TRACKING] = "1"
        kwargs = {"address": cfg.resources.address, "log_to_driver": verbose}
    else:
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        if verbose:
            env[STATE_TRACKING] = "1"
        else:
            env["RAY_TRAIN_METRICS_ENABLED"] = "0"
        kwargs = {"address": "local", "num_gpus": cfg.resources.num_gpus, "include_dashboard": verbose,
                  "log_to_driver": verbose}
    kwargs["logging_level"] = logging.INFO if verbose else logging.WARNING
    return kwargs, env


def init_ray(cfg: Config, verbose: bool | None = None) -> bool:
    """Connect to (or start) Ray; True if this call did, so the driver also shuts it down.

    `verbose` None: on when the root logger shows INFO (`hql-ray train -v`)."""
    kwargs, env = ray_settings(cfg, verbose)
    for key, value in env.items():  # the user's own setting wins
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.NOTSET if kwargs["logging_level"] <= logging.INFO
                                                  else logging.ERROR)
    context = ray.init(**kwargs)
    url = getattr(context, "dashboard_url", None)
    if url:
        url = url if "://" in url else f"http://{url}"
        print(f"hql-ray: Ray dashboard {url} (Jobs, Logs; Train: one run per tree node)", file=sys.stderr)
    return True


def detect_slots(cfg: Config) -> Slots:
    """The run's slots from what the Ray cluster offers (`run_model.count_slots`)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return count_slots(cfg, gpus, resources.get("CPU", 1), cuda=gpus > 0 and _workers_have_cuda())


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
