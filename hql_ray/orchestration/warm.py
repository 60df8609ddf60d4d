"""Warm workers: long-lived Ray actors, one per CPU slot, that run single-worker nodes one after another.

A node's own Ray Train run starts a controller, three helper actors and a worker process, and the
worker imports torch, transformers, peft and bitsandbytes: about 30 CPU-seconds before the first step,
measured on a 2-core laptop, where a demo leaf trains and evaluates in ~11 s. A warm worker pays the
imports once and then runs node after node through the same `ray_worker.run_node` as a Ray Train
worker, with the same board (progress, attempts), the same keeper hand-off, and a checkpoint under
`<storage>/<run name>/latest` from which a replacement worker resumes when one dies (up to
`resources.max_failures` times, as Ray Train's FailureConfig does).

`resources.executor` picks it (`auto`: on the CPU slots of a one-machine Ray with local storage).
Warm actors hold no Ray resources: the driver never runs more workers than slots (its own
accounting), so a Ray Train run of a several-worker node never waits on an idle warm worker. That is
also why they are for CPU slots on one machine only: a GPU must be held by whoever uses it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hql_ray.orchestration.board import Attempt
from hql_ray.orchestration.job import NodeJob
from hql_ray.orchestration.ray_worker import BoardProgress, run_node, worker_identity
from hql_ray.orchestration.run_model import Slots
from hql_ray.settings.errors import ConfigError, HQLError
from hql_ray.settings.records import NodeResult
from hql_ray.training.context import LocalContext

log = logging.getLogger(__name__)


class WarmContext(BoardProgress, LocalContext):
    """One worker, CPU; checkpoints under the run's storage folder (what a replacement resumes from)."""

    def __init__(self, checkpoint_root: str, board, node_id: str):
        super().__init__(checkpoint_root=checkpoint_root, device="cpu")
        self._board = board
        self._node_id = node_id


@ray.remote(num_cpus=0)
class NodeWorker:
    """Imports the training stack once; `run` trains (or evaluates) one node at a time."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))  # what a Ray Train worker with this many CPUs would use
        import hql_ray.training.node  # noqa: F401 - the imports every node would otherwise pay again

    def run(self, job: NodeJob, checkpoint_root: str) -> NodeResult | None:
        workers = [worker_identity()]
        if job.board is not None:  # one call per attempt, as from a Ray Train worker: the driver counts them
            ray.get(job.board.started.remote(job.node.id, Attempt(workers, time.time())))
        try:
            return run_node(job, WarmContext(checkpoint_root, job.board, job.node.id), workers)
        finally:
            gc.collect()  # the node's model and data: the next node starts from a clean heap


def wanted(executor: str, slots: Slots, storage: str) -> bool:
    """Whether single-worker nodes go to warm workers (`resources.executor`)."""
    if executor == "ray-train":
        return False
    one_machine = len([n for n in ray.nodes() if n.get("Alive")]) == 1
    fits = not slots.use_gpu and "://" not in storage and one_machine
    if executor == "warm" and not fits:
        raise ConfigError("resources.executor warm runs single-worker nodes on the CPU slots of a one-machine Ray "
                          "with local storage (a GPU must be held by the run that uses it); use auto or ray-train")
    return fits


class WarmPool:
    """The run's warm workers, started on demand (at most one per slot in use) and kept until `shutdown`."""

    def __init__(self, head_node_id: str, threads: int):
        self._head = head_node_id
        self._threads = threads
        self._idle: list = []
        self._all: list = []
        self._lock = threading.Lock()

    def _acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        actor = NodeWorker.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._head, soft=False), max_restarts=0,
        ).remote(self._threads)
        with self._lock:
            self._all.append(actor)
        return actor

    def _release(self, actor) -> None:
        with self._lock:
            self._idle.append(actor)

    def _discard(self, actor) -> None:
        with self._lock:
            if actor in self._all:
                self._all.remove(actor)
        ray.kill(actor, no_restart=True)

    def fit(self, job: NodeJob) -> NodeResult:
        """Run the node on a warm worker; a failed attempt is retried (from the node's latest checkpoint)
        up to `job.max_failures` times, on a new worker when the old one died."""
        checkpoint_root = str(Path(job.storage) / job.name)
        failures = 0
        while True:
            actor = self._acquire()
            try:
                result = ray.get(actor.run.remote(job, checkpoint_root))
            except ray.exceptions.RayTaskError as err:  # raised by the node: retried as Ray Train would
                self._release(actor)
                error: Exception = err
            except Exception as err:  # noqa: BLE001 - the process died (killed, out of memory): a new one resumes
                self._discard(actor)
                error = err
            else:
                self._release(actor)
                if result is None:
                    raise HQLError(f"node {job.node.id}: training returned nothing")
                return result
            failures += 1
            if failures > job.max_failures:
                raise error
            log.warning("node %s: attempt %d failed (%s); retrying from its last checkpoint", job.node.id,
                        failures, str(error).splitlines()[0] if str(error) else type(error).__name__)

    def shutdown(self) -> None:
        with self._lock:
            actors, self._all, self._idle = self._all, [], []
        for actor in actors:
            ray.kill(actor, no_restart=True)
