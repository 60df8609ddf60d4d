"""What node training needs from its surroundings: device, rank, reporting, checkpoints.

`LocalContext` runs a node in-process without Ray (tests, debugging, the bare-loop benchmark);
`hql_ray.orchestration.ray_worker.RayTrainContext` is the same interface inside a Ray Train worker, and
`hql_ray.orchestration.warm.WarmContext` inside a warm worker.
Keeping this seam small is what lets `train_node` run without Ray.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from hql_ray.settings.records import Progress


class NodeContext:
    rank: int = 0
    world_size: int = 1

    @property
    def device(self) -> torch.device:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def latest_checkpoint(self) -> Path | None:
        """Directory of the checkpoint to resume from, or None for a fresh start."""
        return None

    def checkpoint_origin(self) -> str | None:
        """Where the checkpoint `latest_checkpoint` gave comes from (its storage path), for messages."""
        return None

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Called by every worker the same number of times; rank 0 passes the checkpoint dir."""

    def progress(self, update: Progress) -> None:
        """Live progress (step, loss, a long step's task) for the driver's tree view; cheap, best effort."""

    def checkpoint_requested(self) -> bool:
        """Whether the run is stopping (SIGTERM) and the node should write a checkpoint now. Called by every
        worker at the same steps (the answer is agreed across workers)."""
        return False

    def checkpoint_written(self, step: int) -> None:
        """The checkpoint asked for by `checkpoint_requested` is written (at `step`)."""

    def report_checkpoint(self, metrics: dict, write: Callable[[Path], None]) -> None:
        """Every worker reports `metrics`; rank 0 with a checkpoint that `write(folder)` fills (a temporary
        folder, gone once reported: the run's storage keeps its own copy)."""
        with tempfile.TemporaryDirectory(prefix="hql-ckpt-") as tmp:
            if self.is_main:
                write(Path(tmp))
            self.report(metrics, Path(tmp) if self.is_main else None)

    def pausing(self) -> bool:
        """After `checkpoint_requested` said yes: whether that checkpoint is for a resize (resources.elastic),
        so the node's run ends once it is written and the driver launches it again on more workers."""
        return False

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over workers (identity for one worker)."""
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_reduce_sum_async(self, tensor: torch.Tensor):
        """Start summing `tensor` over workers in place; returns a handle to `.wait()` on, or None when there is
        nothing to wait for (one worker). The node's gradient buckets overlap the backward with it."""
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, async_op=True)
        return None


class LocalContext(NodeContext):
    """One process, no Ray. Checkpoints go to `checkpoint_root` (kept: a re-run resumes from them)."""

    def __init__(
        self,
        checkpoint_root: str | Path | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        device: str | torch.device | None = None,
    ):
        self._root = Path(checkpoint_root) if checkpoint_root else None
        self._on_progress = on_progress
        self._device = torch.device(device) if device is not None else None
        self.reports: list[dict] = []

    @property
    def device(self) -> torch.device:
        return self._device or super().device

    def latest_checkpoint(self) -> Path | None:
        if self._root is None:
            return None
        for name in ("latest", ".old"):  # .old: killed between report's two renames
            if (self._root / name / "state.json").exists():
                return self._root / name
        return None

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self._root is not None:
            self._root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self._root, prefix=".ckpt-"))
            shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
            latest = self._root / "latest"
            old = self._root / ".old"
            if latest.exists():
                latest.rename(old)
            tmp.rename(latest)
            shutil.rmtree(old, ignore_errors=True)

    def progress(self, update: Progress) -> None:
        if self._on_progress is not None:
            self._on_progress(update)
