"""Experiment tracking besides the manifest: TensorBoard (on by default), Weights & Biases, MLflow.

Node side: `NodeTracker.open(cfg, node, ctx.rank, ...)` in `hql_ray.training.node.train_node`, which logs from rank 0
(other ranks get a tracker that does nothing): the node's loss curve and validations against the node's
steps and against steps counted from the root (`NodeSpec.step_offset`: the ancestors' steps), learning
rate, real tokens/s, peak memory, and at the end the evaluation scores.

Driver side: `RunTracking.open(cfg, tree, run_dir)` once per run: the config and the tree as TensorBoard text,
the MLflow parent run (its id handed to the nodes in `cfg.tracking.mlflow_parent_run_id`);
`RunTracking.close(manifest, run_dir)` at the end: manifest, results and model cards as the parent's artifacts.

Where things go: TensorBoard event files under <run>/tensorboard/<node id>/ (and the run's text at
<run>/tensorboard/); one W&B run per node (name: node id, group: run name); MLflow: a parent run per tree run,
a nested run per node. wandb and mlflow are imported only when enabled. A tracking failure (server down,
package missing) warns once per backend and switches that backend off: it never stops training.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable

from hql_ray.settings.config import Config
from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeSpec

log = logging.getLogger(__name__)

RUN_STATE_FILE = "tracking.json"  # <run>/tracking.json: the MLflow parent run id, reused on --resume


class TrackingWarning(UserWarning):
    """A tracking backend failed and is switched off (training goes on)."""


# The loss curves, also against steps counted from the root of the tree.
FROM_ROOT = {"loss/train": "loss_from_root/train", "loss/val": "loss_from_root/val"}


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _mlflow_key(key: str) -> str:
    """MLflow allows letters, digits, _ - . / and space in keys: chrf++ -> chrfpp."""
    return re.sub(r"[^\w\-./ ]", "_", key.replace("+", "p"))


def _reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise if an http(s) tracking server does not answer (before any slow client retries)."""
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
            answer.read()


def _mlflow_client(uri: str):
    # Few, short retries: a server that went away must not hold training up for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    _reachable(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class _Backend:
    """One destination; `Tracked` switches it off (one warning) at its first failure."""

    name = "backend"

    def log(self, values: dict[str, float], step: int, global_step: int) -> None: ...

    def finish(self, summary: dict[str, float], step: int, global_step: int) -> None:
        self.log(summary, step, global_step)

    def close(self, ok: bool) -> None: ...


class TensorBoardBackend(_Backend):
    name = "tensorboard"

    def __init__(self, folder: Path, node: NodeSpec):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        langs = ", ".join(f"{code} {name}" for code, name in node.languages)
        self.writer.add_text("node", f"**{node.id}** (level {node.level}, depth {node.depth}, parent "
                                     f"{node.parent or '-'}; starts at step {node.step_offset} from the root): {langs}")

    def log(self, values: dict[str, float], step: int, global_step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
            if key in FROM_ROOT:
                self.writer.add_scalar(FROM_ROOT[key], value, global_step)
        self.writer.flush()

    def close(self, ok: bool) -> None:
        self.writer.close()


class WandbBackend(_Backend):
    name = "wandb"

    def __init__(self, cfg: Config, node: NodeSpec):
        import wandb

        folder = os.environ.get("WANDB_DIR") or str(cfg.run_dir)
        Path(folder).mkdir(parents=True, exist_ok=True)
        node_info = {"node": node.id, "level": node.level, "depth": node.depth, "parent": node.parent,
                     "languages": [code for code, _ in node.languages], "step_offset": node.step_offset}
        self.run = wandb.init(project=cfg.tracking.wandb_project, entity=cfg.tracking.wandb_entity,
                              group=cfg.run_name, name=node.id, job_type=node.level, dir=folder,
                              config={**node_info, **cfg.to_dict()}, reinit="create_new")
        self.run.define_metric("global_step")
        for key in FROM_ROOT.values():
            self.run.define_metric(key, step_metric="global_step")

    def log(self, values: dict[str, float], step: int, global_step: int) -> None:
        extra = {FROM_ROOT[k]: v for k, v in values.items() if k in FROM_ROOT}
        self.run.log({**values, **extra, "global_step": global_step}, step=step)

    def finish(self, summary: dict[str, float], step: int, global_step: int) -> None:
        self.run.summary.update(summary)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class MlflowBackend(_Backend):
    name = "mlflow"

    def __init__(self, cfg: Config, node: NodeSpec):
        self.client = _mlflow_client(cfg.tracking.mlflow_uri)
        parent = cfg.tracking.mlflow_parent_run_id
        tags = {"hql.node": node.id, "hql.level": node.level, "hql.run": cfg.run_name}
        if parent:
            experiment = self.client.get_run(parent).info.experiment_id
            tags["mlflow.parentRunId"] = parent
        else:  # a node run on its own (no driver): a top-level run
            experiment = experiment_id(self.client, cfg.tracking.mlflow_experiment)
        self.run_id = self.client.create_run(experiment, run_name=node.id, tags=tags).info.run_id
        params = {"node": node.id, "level": node.level, "depth": node.depth, "parent": node.parent,
                  "languages": ",".join(code for code, _ in node.languages), "step_offset": node.step_offset}
        log_params(self.client, self.run_id, {**params, **_flatten(cfg.to_dict())})

    def log(self, values: dict[str, float], step: int, global_step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), now, step) for k, v in values.items()]
        metrics += [Metric(FROM_ROOT[k], float(v), now, global_step) for k, v in values.items() if k in FROM_ROOT]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(_mlflow_key(str(k))[:250], str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


class Tracked:
    """Backends behind one guard: the first failure of a backend warns once and switches it off."""

    def __init__(self, where: str):
        self.where = where
        self.backends: list[_Backend] = []

    def add(self, name: str, make: Callable[[], _Backend]) -> None:
        try:
            self.backends.append(make())
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            self._warn(name, err)

    def each(self, call: Callable[[_Backend], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as err:  # noqa: BLE001 - tracking never stops training
                self.backends.remove(backend)
                self._warn(backend.name, err)

    def _warn(self, name: str, err: BaseException) -> None:
        message = f"{self.where}: tracking to {name} switched off: {type(err).__name__}: {err}"[:1000]
        log.debug(message, exc_info=err)
        warnings.warn(message, TrackingWarning, stacklevel=3)


def _real_tokens(data) -> Any:
    """Per example: source + target tokens (no padding), as one numpy array."""
    import pyarrow.compute as pc

    if data is None or len(data) == 0:
        return None
    table = data.with_format("arrow")[:]
    return (pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
            + pc.list_value_length(table.column("labels")).to_numpy(zero_copy_only=False))


def _peak_memory_gb(device) -> float:
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB


class NodeTracker:
    """A node's curves and scores to every enabled backend (rank 0 only; elsewhere it does nothing)."""

    def __init__(self, node: NodeSpec, tracked: Tracked | None = None, tokens=None, device=None):
        self.node = node
        self.tracked = tracked or Tracked(f"node {node.id}")
        self._tokens = tokens  # real tokens per training example (numpy), or None
        self._device = device
        self._since_tokens, self._since_seconds = 0, 0.0
        self.step = 0

    @property
    def active(self) -> bool:
        return bool(self.tracked.backends)

    @classmethod
    def open(cls, cfg: Config, node: NodeSpec, rank: int = 0, train_data=None, device=None) -> "NodeTracker":
        if rank != 0:
            return cls(node)
        t, tracked = cfg.tracking, Tracked(f"node {node.id}")
        if t.tensorboard:
            tracked.add("tensorboard", lambda: TensorBoardBackend(cfg.run_dir / "tensorboard" / node.id, node))
        if t.wandb:
            tracked.add("wandb", lambda: WandbBackend(cfg, node))
        if t.mlflow_uri:
            tracked.add("mlflow", lambda: MlflowBackend(cfg, node))
        tokens = None
        if tracked.backends:
            try:
                tokens = _real_tokens(train_data)
            except Exception:  # noqa: BLE001 - tokens/s is then not logged
                log.debug("node %s: no token counts for tokens/s", node.id, exc_info=True)
        return cls(node, tracked, tokens, device)

    def trained(self, rows, seconds: float) -> None:
        """One optimizer step done: its global batch's example indices, and the time it took."""
        if self._tokens is not None and rows is not None:
            self._since_tokens += int(self._tokens[list(rows)].sum())
        self._since_seconds += seconds

    def point(self, point: HistoryPoint, lr: float | None = None) -> None:
        """A history point of the node, with the step's learning rate."""
        if not self.active:
            return
        self.step = step = point.step
        values = {}
        if point.train_loss is not None:
            values["loss/train"] = float(point.train_loss)
        if point.val_loss is not None:
            values["loss/val"] = float(point.val_loss)
        if step > 0:
            if lr is not None:
                values["train/lr"] = float(lr)
            if self._tokens is not None and self._since_seconds > 0:
                values["train/tokens_per_s"] = self._since_tokens / self._since_seconds
            values["train/peak_memory_gb"] = _peak_memory_gb(self._device)
        self._since_tokens, self._since_seconds = 0, 0.0
        self.tracked.each(lambda b: b.log(values, step, self.node.step_offset + step))

    def finish(self, metrics: NodeMetrics) -> None:
        """The node's result: evaluation scores per language and test set, best validation loss."""
        if not self.active:
            return
        summary = {}
        for code, sets in metrics.languages.items():
            for test_set, scores in sets.items():
                for name, value in scores.to_json().items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        summary[f"eval/{code}/{test_set}/{name}"] = float(value)
        for key, value in (("val_loss", metrics.val_loss), ("initial_val_loss", metrics.initial_val_loss)):
            if value is not None:
                summary[f"best/{key}"] = float(value)
        step = metrics.steps or self.step
        self.tracked.each(lambda b: b.finish(summary, step, self.node.step_offset + step))

    def close(self, ok: bool = True) -> None:
        self.tracked.each(lambda b: b.close(ok))
        self.tracked.backends.clear()


# ---- driver side -----------------------------------------------------------------------------------
def step_offset(ancestors: list[str], nodes: dict) -> int:
    """Steps trained before a node, counted from the root: the sum of its ancestors' steps (manifest records)."""
    return sum((nodes[a].metrics.steps or 0) for a in ancestors if a in nodes and nodes[a].metrics is not None)


def write_run_text(folder: Path, cfg: Config, tree) -> _Backend:
    """The config (YAML) and the tree as TensorBoard text, once per run folder."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    done = _Backend()
    done.name = "tensorboard"
    if any(folder.glob("events.out.tfevents.*")):
        return done
    writer = SummaryWriter(log_dir=str(folder))
    config = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    writer.add_text("config", "    " + config.replace("\n", "\n    "))
    writer.add_text("tree", "    " + tree.render().replace("\n", "\n    "))
    writer.close()
    return done


class RunTracking:
    """The driver's share: run-level TensorBoard text, the MLflow parent run and its artifacts."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.tracked = Tracked(f"run {cfg.run_name}")
        self.mlflow = None  # (client, parent run id)
        self._closed = False

    @classmethod
    def open(cls, cfg: Config, tree, run_dir: Path, enabled: bool = True) -> "RunTracking":
        """Sets `cfg.tracking.mlflow_parent_run_id` (the nodes' runs nest under it) when MLflow is on."""
        self = cls(cfg)
        if not enabled:
            return self
        run_dir = Path(run_dir)
        if cfg.tracking.tensorboard:
            self.tracked.add("tensorboard", lambda: write_run_text(run_dir / "tensorboard", cfg, tree))
        if cfg.tracking.mlflow_uri:
            self.tracked.add("mlflow", lambda: self._open_mlflow(run_dir))
        atexit.register(self._abandoned)
        return self

    def _open_mlflow(self, run_dir: Path) -> _Backend:
        import json

        cfg = self.cfg
        client = _mlflow_client(cfg.tracking.mlflow_uri)
        state_file = run_dir / RUN_STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        parent = state.get("mlflow_parent_run_id") if state.get("mlflow_uri") == cfg.tracking.mlflow_uri else None
        if parent:  # --resume: the same parent run again
            client.update_run(parent, status="RUNNING")
        else:
            experiment = experiment_id(client, cfg.tracking.mlflow_experiment)
            parent = client.create_run(experiment, run_name=cfg.run_name, tags={"hql.run": cfg.run_name}).info.run_id
            log_params(client, parent, _flatten(cfg.to_dict()))
            run_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"mlflow_uri": cfg.tracking.mlflow_uri, "mlflow_parent_run_id": parent}))
        cfg.tracking.mlflow_parent_run_id = parent
        self.mlflow = (client, parent)
        backend = _Backend()
        backend.name = "mlflow"
        return backend

    def close(self, manifest, run_dir: Path) -> None:
        """The manifest, results and model cards as the parent run's artifacts; the parent run ends."""
        self._closed = True
        if self.mlflow is None or not any(b.name == "mlflow" for b in self.tracked.backends):
            return
        client, parent = self.mlflow
        run_dir = Path(run_dir)
        ok = manifest.data.get("status", "done") == "done"

        def upload(_backend) -> None:
            for path in [run_dir / "manifest.json", run_dir / "results.md", run_dir / "results.csv"]:
                if path.is_file():
                    client.log_artifact(parent, str(path))
            for card in sorted((run_dir / "final").glob("*/README.md")):
                client.log_artifact(parent, str(card), artifact_path=f"model_cards/{card.parent.name}")
            client.set_terminated(parent, "FINISHED" if ok else "FAILED")

        self.tracked.each(lambda b: upload(b) if b.name == "mlflow" else None)

    def _abandoned(self) -> None:
        """At exit without `close` (interrupted): the parent run is marked KILLED (a --resume reopens it)."""
        if self._closed or self.mlflow is None:
            return
        try:
            self.mlflow[0].set_terminated(self.mlflow[1], "KILLED")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
