"""The Ray Train side of a node: a NodeContext over ray.train, and the per-worker loop function.

Into the worker cross the run config (a plain dict), the `NodeSpec` and the ObjectRefs of the parent
adapters; out comes rank 0's `NodeResult`, its adapter tensors as numpy. The training itself is
`hql_ray.training.node.train_node`, which knows nothing of Ray.
"""

from __future__ import annotations

import dataclasses
import warnings
import os
import socket
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch

from hql_ray.training import handoff
from hql_ray.training.context import NodeContext
from hql_ray.settings.records import AdapterState, NodeSpec


def to_wire(state: AdapterState) -> AdapterState:
    """Ray Train refuses torch tensors in return values: ship numpy (zero-copy in the object store)."""
    tensors, dtypes = {}, {}
    for key, t in state.tensors.items():
        dtypes[key] = str(t.dtype).replace("torch.", "")
        t = t.detach().cpu()
        tensors[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return AdapterState(state.config, tensors, dtypes)


def from_wire(wire: AdapterState, copy: bool = True) -> AdapterState:
    """Torch tensors again. The object store hands out read-only arrays: copied, unless `copy=False`
    for a caller that only reads them (the driver saving a node's adapter: no second 1.17 GB)."""
    tensors = {}
    for key, array in wire.tensors.items():
        if copy or array.flags.writeable:
            t = torch.from_numpy(array.copy() if copy else array)
        else:
            with warnings.catch_warnings():  # "non-writable array": read only, never written
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(array)
        tensors[key] = t.to(getattr(torch, wire.dtypes[key])) if key in wire.dtypes else t
    return AdapterState(wire.config, tensors)


class BoardProgress:
    """Live progress to the run board: rank 0 only, and at most a few times a second (a shared actor)."""

    rank: int
    _board = None
    _node_id = ""
    _last_progress = 0.0

    def progress(self, update: dict) -> None:
        if self._board is None or self.rank != 0:
            return
        now = time.time()
        if update.get("phase") == "train" and now - self._last_progress < 0.5 and "val_loss" not in update:
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


def worker_identity() -> dict:
    return {
        "host": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda": torch.cuda.is_available(),
    }


def gather_identities(ctx: RayTrainContext) -> list[dict]:
    me = worker_identity()
    if ctx.world_size <= 1 or not torch.distributed.is_initialized():
        return [me]
    out: list = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, me)
    return out


def node_train_loop(loop_config: dict):
    """Entry point of every Ray Train worker of a node."""
    node: NodeSpec = loop_config["node"]
    board = loop_config.get("board")
    ctx = RayTrainContext(board=board, node_id=node.id)
    workers = gather_identities(ctx)
    if ctx.rank == 0 and board is not None:
        # One call per (re)start of the worker group: the driver counts attempts from these.
        ray.get(board.started.remote(node.id, {"workers": workers, "time": time.time()}))
        # The placement group this run holds: released by the driver if the run's caller is killed.
        board.run_started.remote(loop_config.get("run"), node.id, None, ray.util.get_current_placement_group())
    return run_node(loop_config, ctx, workers)


def run_node(loop_config: dict, ctx: NodeContext, workers: list[dict]):
    """A node's work on one worker of its run, whoever runs it (a Ray Train worker, or a warm worker:
    `hql_ray.orchestration.warm`): the ancestors' adapters from the object store, the training (or the evaluation
    only, or the simulation), and on rank 0 the result, its adapter handed to the run's keeper."""
    node: NodeSpec = loop_config["node"]
    refs = loop_config.get("parent_refs") or []
    # The ancestors' adapters, read in place from the object store (no copy for the checksums).
    wires = [ray.get(ref) for ref in refs]
    received = [handoff.state_checksum(from_wire(w, copy=False)) for w in wires]

    if loop_config.get("evaluate_only"):  # --resume after a failed evaluation: the last ref is the node's own
        from hql_ray.training.reevaluate import evaluate_trained_node

        chain = [from_wire(w) for w in wires]
        del wires
        result = evaluate_trained_node(loop_config["config"], node, chain, ctx)
        return dataclasses.replace(result, workers=workers) if ctx.rank == 0 else None
    if loop_config.get("simulate"):
        from hql_ray.training.simulate import simulated_node

        del wires
        result = simulated_node(loop_config["simulate"], node, ctx, loop_config["config"])
    else:
        from hql_ray.training.node import train_node  # heavy imports (transformers, peft): only when training

        parent_chain = [from_wire(w) for w in wires]  # writable copies: they are loaded into the model
        del wires
        result = train_node(loop_config["config"], node, parent_chain, ctx)
    if ctx.rank != 0:
        return None
    result = dataclasses.replace(result, received_checksums=received, workers=workers)
    keeper = loop_config.get("keeper")
    if keeper is not None and result.adapter is not None:  # saved and kept on the head: no bytes to the driver
        checksum = ray.get(keeper.keep.remote(node.id, to_wire(result.adapter), loop_config["adapter_path"]))
        return dataclasses.replace(result, adapter=None, kept_checksum=checksum)
    return dataclasses.replace(result, adapter=to_wire(result.adapter))
