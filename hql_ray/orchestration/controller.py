"""A TorchTrainer cheaper per `fit()`: its controller actor class made once per process, no actors it does not use.

Ray Train (V2) wraps its `TrainController` in a fresh `ray.remote(...)` class at every `fit()`; a fresh
class is exported to the GCS again, and the export hashes the class's disassembly (Ray's "collision
identifier"): ~95 ms of the driver's CPU per node on 2 cores, half of what a node cost the driver
(benchmarks/README.md, "driver_cpu"). The class's options are the same for every fit in a
process (the driver's node, the driver's environment), so the class is made once per set of options
and Ray exports it once per session.

Where Ray runs without the dashboard (a local Ray as `hql-ray train` starts it), the node trainer also leaves
out Ray Train's `PlacementGroupCleaner`: a detached actor per run that polls the dashboard's state API to see
its controller die. Without that API it never sees it: it costs ~2 CPU-s and ~200 MB per run for nothing, and
stays until Ray stops after a killed run (a trial ASHA stopped). The run board releases those runs' placement
groups instead (`RunBoard.reap`). And for a run without Ray Data datasets (every node's: workers read their
own data) it leaves out the DatasetsCallback, which starts a `DatasetManager` actor (~200 MB) per worker-group
start for nothing. benchmarks/fit_cost.py measures both, side by side.

This mirrors one private method of Ray's trainer. It is used only when that method is the one it was
written from (`RAY_METHOD_SHA`, Ray 2.60): any other Ray runs its own method unchanged, one fit at a time
slower, never wrong. HQL_RAY_STOCK_TRAINER=1 asks for Ray's own TorchTrainer (benchmarks/driver_cpu.py's
baseline; a way out should a Ray fix release change what the mirror assumes).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import threading

RAY_METHOD_SHA = "ea57ec4498323973"  # sha256 prefix of DataParallelTrainer._initialize_and_run_controller
_classes: dict[tuple, object] = {}
_lock = threading.Lock()  # the driver fits sibling nodes from a thread pool


def ray_method_matches() -> bool:
    """Whether Ray's own `_initialize_and_run_controller` is the one `NodeTrainer` mirrors."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    source = inspect.getsource(DataParallelTrainer._initialize_and_run_controller)
    return hashlib.sha256(source.encode()).hexdigest()[:16] == RAY_METHOD_SHA


def controller_class(env_vars: dict, node_id: str):
    """The remote TrainController class for these options: made (and so exported) once per process."""
    import ray
    from ray.train.v2._internal.execution.controller import TrainController

    key = (node_id, tuple(sorted(env_vars.items())))
    with _lock:
        if key not in _classes:
            _classes[key] = ray.remote(num_cpus=0, label_selector={ray._raylet.RAY_NODE_ID_KEY: node_id},
                                       runtime_env={"env_vars": env_vars})(TrainController)
        return _classes[key]


def state_api_available() -> bool:
    """Whether this Ray runs the dashboard, whose state API Ray Train's PlacementGroupCleaner polls."""
    try:
        from ray._private.services import get_webui_url_from_internal_kv

        return bool(get_webui_url_from_internal_kv())
    except Exception:  # noqa: BLE001 - not known: keep Ray's cleaner
        return True


def unneeded(callback, has_datasets: bool) -> bool:
    """Ray Train callbacks that start an actor per run for nothing here: the PlacementGroupCleaner without the
    dashboard's state API, the DatasetsCallback's DatasetManager for a run without Ray Data datasets."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    if isinstance(callback, DatasetsCallback):
        return not has_datasets
    return isinstance(callback, PlacementGroupCleanerCallback) and not state_api_available()


@functools.lru_cache(maxsize=1)
def trainer_class():
    """`NodeTrainer` where Ray's method is the one mirrored, else Ray's `TorchTrainer` itself."""
    from ray.train.torch import TorchTrainer

    if os.environ.get("HQL_RAY_STOCK_TRAINER") == "1" or not ray_method_matches():
        return TorchTrainer

    class NodeTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs):
            import ray
            from ray.train.v2.api import data_parallel_trainer as ray_trainer

            env_vars = ray_trainer.get_env_vars_to_propagate()
            env_vars.setdefault(ray_trainer.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
                                ray_trainer.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
            cls = controller_class(env_vars, ray.get_runtime_context().get_node_id())
            controller = cls.remote(**controller_init_kwargs)
            if threading.current_thread() is threading.main_thread():  # as Ray: Ctrl-C aborts the run
                self._register_sigint_handler(controller)
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())

        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not unneeded(c, bool(self.datasets))]

    return NodeTrainer
