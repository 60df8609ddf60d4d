"""The Ray Train side of a node: a NodeContext over ray.train, and the per-worker loop function.

Into the worker crosses the `NodeJob` (its run config, its `NodeSpec`, the refs of the adapters it starts
from, its work); out comes rank 0's `NodeResult`, its adapter handed to the run's keeper. The work
itself (`hql_ray.training.work`: training, re-evaluation, simulation) knows nothing of Ray.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch

from hql_ray.orchestration.board import GO_ON, PAUSE, Attempt
from hql_ray.orchestration.job import NodeJob
from hql_ray.settings.records import NodeResult, Progress, WorkerInfo
from hql_ray.training.adapter_files import from_wire, state_checksum, to_wire
from hql_ray.training.context import NodeContext


class BoardProgress:
    """Live progress to the run board (rank 0 only, and at most a few times a second: a shared actor), and
    the board's stop request (SIGTERM), asked without waiting and agreed across the node's workers."""

    rank: int
    _board = None
    _node_id = ""
    _last_progress = 0.0
    _stop_ref = None  # the pending `checkpoint_requested` call
    _asked = GO_ON  # rank 0's answer from the board (GO_ON, STOP or PAUSE); kept once it is not GO_ON
    _agreed = GO_ON  # the same, agreed across the workers (the other ranks send GO_ON: the sum is rank 0's)

    def checkpoint_requested(self) -> bool:
        if self._board is None:
            return False
        if self._asked == GO_ON and self.rank == 0:
            if self._stop_ref is None:
                self._stop_ref = self._board.checkpoint_requested.remote(self._node_id)
            ready, _ = ray.wait([self._stop_ref], timeout=0)
            if ready:
                self._asked, self._stop_ref = int(ray.get(self._stop_ref)), None
        flag = torch.tensor([float(self._asked)], device=self.device)
        self._agreed = int(self.all_reduce_sum(flag).item())
        return self._agreed != GO_ON

    def pausing(self) -> bool:
        return self._agreed == PAUSE

    def checkpoint_written(self, step: int) -> None:
        if self._board is not None and self.rank == 0:
            self._board.checkpointed.remote(self._node_id, step)

    def progress(self, update: Progress) -> None:
        if self._board is None or self.rank != 0:
            return
        now = time.time()
        routine = update.val_loss is None and update.resumed_from is None  # (those two always go through)
        if update.phase == "train" and now - self._last_progress < 0.5 and routine:
            return
        self._last_progress = now
        self._board.progress.remote(self._node_id, update)


class RayTrainContext(BoardProgress, NodeContext):
    def __init__(self, board=None, node_id: str = ""):
        tc = ray.train.get_context()
        self.rank = tc.get_world_rank()
        self.world_size = tc.get_world_size()
        self._board = board
        self._node_id = node_id
        self._ckpt_tmp = None

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")  # CPU run, or logical GPU slots in tests

    def checkpoint_origin(self) -> str | None:
        ckpt = ray.train.get_checkpoint()
        return None if ckpt is None else ckpt.path

    def latest_checkpoint(self) -> Path | None:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        # Materialise locally (storage may be remote); kept until the worker exits.
        self._ckpt_tmp = tempfile.mkdtemp(prefix="hql-resume-")
        return Path(ckpt.to_directory(self._ckpt_tmp))

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def worker_identity() -> WorkerInfo:
    return WorkerInfo(socket.gethostname(), ray.util.get_node_ip_address(), os.getpid(),
                      [str(g) for g in ray.get_gpu_ids()], torch.cuda.is_available())


def gather_identities(ctx: RayTrainContext) -> list[WorkerInfo]:
    me = worker_identity()
    if ctx.world_size <= 1 or not torch.distributed.is_initialized():
        return [me]
    out: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, me)
    return out


def node_train_loop(loop_config: dict):
    """Entry point of every Ray Train worker of a node."""
    job: NodeJob = loop_config["job"]
    ctx = RayTrainContext(board=job.board, node_id=job.node.id)
    workers = gather_identities(ctx)
    if ctx.rank == 0 and job.board is not None:
        # One call per (re)start of the worker group: the driver counts attempts from these.
        ray.get(job.board.started.remote(job.node.id, Attempt(workers, time.time())))
        # The placement group this run holds: released by the driver if the run's caller is killed.
        job.board.run_started.remote(job.name, job.node.id, None, ray.util.get_current_placement_group())
    return run_node(job, ctx, workers)


def run_node(job: NodeJob, ctx: NodeContext, workers: list[WorkerInfo]) -> NodeResult | None:
    """A node's work on one worker of its run, whoever runs it (a Ray Train worker, or a warm worker:
    `hql_ray.orchestration.warm`): the adapters it starts from, out of the object store; the work; and on
    rank 0 the result, its adapter handed to the run's keeper (saved there, never sent to the driver)."""
    wires = [ray.get(ref) for ref in job.parent_refs]
    received = [state_checksum(from_wire(w, copy=False)) for w in wires]  # read in place: no copy
    chain = [from_wire(w) for w in wires] if job.work.reads_adapters else []  # writable: loaded into the model
    del wires
    result = job.work.run(job.cfg, job.node, chain, ctx)
    if ctx.rank != 0:
        return None
    result = dataclasses.replace(result, received_checksums=received, workers=workers)
    if result.adapter is None:
        return result
    if job.keeper is not None:
        checksum = ray.get(job.keeper.keep.remote(job.name, to_wire(result.adapter), job.adapter_path))
        return dataclasses.replace(result, adapter=None, kept_checksum=checksum)
    return dataclasses.replace(result, adapter=to_wire(result.adapter))
