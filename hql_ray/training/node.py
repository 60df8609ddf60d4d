"""One node of the tree: train on the union of its languages, keep the best step, evaluate. No Ray here.

`train_node(cfg, node, parent_chain, ctx)` reads like a recipe: `setup` (data, model, optimizer,
schedule -> a TrainState), `resume_or_start`, the loop (`train_step`, then `when_due`: loss-curve
point, progress, validation, report, checkpoint), `finish` (best step restored, metrics, evaluation,
the node's adapter as a NodeResult). It runs the same in a test, a loop, or a Ray Train worker
(`hql_ray.orchestration.ray_worker`): everything Ray-specific is behind `ctx` (`hql_ray.training.context`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.optimization import get_linear_schedule_with_warmup

from hql_ray.training import adafactor
from hql_ray.data import batching
from hql_ray.data.batch_plan import BatchPlan
from hql_ray.data import dataset as ds_lib
from hql_ray.scoring import evaluation
from hql_ray.training import dropout, handoff, losses, modeling, tracking
from hql_ray.settings.config import Config
from hql_ray.settings.errors import HQLError
from hql_ray.settings.handoffs import handoff_for
from hql_ray.training.context import LocalContext, NodeContext
from hql_ray.training.step import StepBatch, StepLosses, StepRunner, to_device
from hql_ray.settings.records import AdapterState, HistoryPoint, NodeMetrics, NodeResult, NodeSpec, Progress

log = logging.getLogger(__name__)


def build_model(cfg: Config, parent_chain: list[AdapterState], device: torch.device):
    """Base model + the node's trainable part, started from the parent's adapters."""
    checkpointing = cfg.model.gradient_checkpointing
    if checkpointing is None:  # on for GPUs (activations dominate at mT5-large), off on CPU
        checkpointing = torch.device(device).type == "cuda"
    model = modeling.load_base_model(
        modeling.base_model_path(cfg),
        cfg.model.mode,
        device,
        compute_dtype=modeling.compute_dtype(cfg.model.compute_dtype),
        double_quant=cfg.model.double_quant,
        quant_type=cfg.model.quant_type,
        gradient_checkpointing=checkpointing,
    )
    return handoff.attach_node_adapter(model, cfg.model.lora, handoff_for(cfg), parent_chain or [])


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params.items()}


def restore(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))


def node_seed(run_seed: int, node_id: str) -> int:
    """Each node's own seed: fresh LoRA matrices differ from node to node (as the original's did,
    drawn from a running RNG), and stay the same from run to run."""
    return (run_seed * 1_000_003 + zlib.crc32(node_id.encode())) % 2**31


@torch.no_grad()
def validation_loss(model, data, pad_id: int, cfg: Config, ctx: NodeContext) -> float:
    """The validation set's mean loss over length-sorted batches of eval.batch_size, summed across workers.

    train.validation_loss "token": every label token weighs the same (each batch's mean token loss weighted by
    its tokens). "batch_mean": the original HF Trainer's eval_loss, each batch's mean loss weighted by its
    examples (with equal batches, the mean of the per-batch means)."""
    was_training = model.training
    model.eval()
    lengths = ds_lib.example_lengths(data)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    mine = order[ctx.rank :: ctx.world_size]
    total = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), cfg.eval.batch_size):
        rows = data.select(mine[start : start + cfg.eval.batch_size])
        batch = to_device(batching.collate(list(rows), pad_id), ctx.device)
        loss = model(**batch).loss.float()
        weight = len(rows) if cfg.train.validation_loss == "batch_mean" else int((batch["labels"] != -100).sum())
        total += torch.tensor([loss.item() * weight, weight], dtype=torch.float64)
    ctx.all_reduce_sum(total)
    model.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def make_optimizer(cfg: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adafactor with the paper's settings (lr from the schedule, no relative step or scaling)."""
    if cfg.train.optimizer == "adafactor_hf":
        from transformers.optimization import Adafactor
    else:  # the same update rule over stacked tensors (hql_ray/training/adafactor.py): ~100 ops per step, not ~26 per tensor
        Adafactor = adafactor.Adafactor
    return Adafactor(params, lr=cfg.train.learning_rate, scale_parameter=False, relative_step=False,
                     warmup_init=False, weight_decay=cfg.train.weight_decay)


# ---- checkpoints (for retry after a worker failure) ----------------------------------------------
def save_checkpoint(path: Path, params, best, optimizer, scheduler, state: dict) -> None:
    save_file(snapshot(params), str(path / "trainable.safetensors"))
    if best is not None:
        save_file(best, str(path / "best.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    # The RNG state too: dropout after a resume draws what it would have drawn, so a retried node ends
    # with the same adapter as one never interrupted.
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               path / "optim.pt")
    (path / "state.json").write_text(json.dumps(state))


def load_checkpoint(path: Path, params, optimizer, scheduler) -> tuple[dict, dict | None]:
    restore(params, load_file(str(path / "trainable.safetensors")))
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None
    optim = torch.load(path / "optim.pt", weights_only=True)  # tensors and numbers only, no pickled code
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = optim.get("rng", {})  # (absent in checkpoints written before it was kept)
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / "state.json").read_text()), best


# ---- the node: set-up, loop, finish ----------------------------------------------------------------
class LossMeter:
    """Mean training loss of the steps since the meter was last read (`take`), over the node's StepLosses: the
    device values are read back only when a mean is asked for (hql_ray/training/step.py)."""

    def __init__(self, losses: StepLosses) -> None:
        self.losses, self.start = losses, len(losses)

    def mean(self) -> float:
        values = self.losses.floats()[self.start:]
        return sum(values) / max(len(values), 1)

    def take(self) -> float:
        value = self.mean()
        self.start = len(self.losses)
        return value


@dataclass
class TrainState:
    """What the node's loop works on; `step`, `best*`, `history` and `initial_loss` are also checkpointed."""

    cfg: Config
    ctx: NodeContext
    node: NodeSpec
    languages: list[tuple[str, str]]
    settings: ds_lib.DataSettings
    tokenizer: Any
    train_data: Any
    val_data: Any
    model: Any
    params: dict[str, torch.nn.Parameter]
    # From st.cfg by plan_steps:
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    steps_per_epoch: int = 0
    total_steps: int = 0
    eval_every: int = 0
    ckpt_every: int = 0
    curve_every: int = 0  # loss-curve points between validations: at most ~100 per node
    runner: StepRunner | None = None  # the optimizer step (hql_ray/training/step.py)
    plan: BatchPlan | None = None  # the node's batches and step counts
    started: float = 0.0
    step: int = 0
    best_loss: float = math.inf
    best: dict | None = None  # the trainable tensors at the best validation
    history: list[HistoryPoint] = field(default_factory=list)
    initial_loss: float | None = None
    resumed_step: int | None = None
    tracker: tracking.NodeTracker | None = None  # curves and scores to TensorBoard / W&B / MLflow (rank 0)
    batch_rows: list[int] | None = None  # the global batch of the step being trained (tokens/s)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def progress(self, **update) -> None:
        self.ctx.progress(Progress(node=self.node.id, phase="train", step=self.step, total_steps=self.total_steps,
                                   **update))


def setup(cfg: Config, node: NodeSpec, parent_chain: list[AdapterState], ctx: NodeContext) -> TrainState:
    """Data, model, optimizer and schedule of one node."""
    languages = list(node.languages)
    settings = ds_lib.DataSettings.from_config(cfg)
    tokenizer = modeling.load_tokenizer(cfg.model.base)
    train_data = ds_lib.node_dataset(settings, languages, "train", tokenizer, cfg.cache_dir, progress=ctx.progress)
    val_data = ds_lib.node_dataset(settings, languages, "validation", tokenizer, cfg.cache_dir,
                                   progress=ctx.progress)
    model = build_model(cfg, parent_chain, ctx.device)
    if cfg.train.example_dropout:
        model = dropout.install(model)  # masks per example, not per worker
    model.train()
    st = TrainState(cfg, ctx, node, languages, settings, tokenizer, train_data, val_data, model, trainable(model))
    plan_steps(st)
    return st


def plan_steps(st: TrainState) -> None:
    """Optimizer, schedule, step counts and the step runner, from st.cfg (again after a change of config: the
    GPU check's rungs share one loaded model)."""
    cfg, ctx = st.cfg, st.ctx
    if st.runner is not None:
        st.runner.close()
    params = list(st.params.values())
    st.optimizer = make_optimizer(cfg, params)
    # The dry run asks the same BatchPlan (orchestration/run_model.py); with train.batch_tokens it needs the sizes.
    st.plan = BatchPlan.of(cfg.train, len(st.train_data), ctx.world_size, sizes=ds_lib.example_sizes(st.train_data))
    st.steps_per_epoch, st.total_steps = st.plan.steps_per_epoch, st.plan.total_steps
    st.eval_every = cfg.train.eval_every or st.steps_per_epoch
    st.ckpt_every = cfg.train.checkpoint_every or st.eval_every
    # A multiple of log_every: the curve's points read the losses when the progress line does (one host sync).
    log_every = cfg.train.log_every
    st.curve_every = log_every * math.ceil(max(log_every, st.total_steps // 100, 1) / log_every)
    st.scheduler = get_linear_schedule_with_warmup(st.optimizer, cfg.train.warmup_steps, st.total_steps)
    st.runner = StepRunner(st.model, params, st.optimizer, st.scheduler, ctx, cfg.train,
                           lambda batch: forward_loss(st, batch))


def resume_or_start(st: TrainState) -> None:
    """From the run's last checkpoint (a restarted worker group), else measure the untrained loss."""
    resumed_from = st.ctx.latest_checkpoint()
    if resumed_from is None:
        st.initial_loss = validation_loss(st.model, st.val_data, st.pad_id, st.cfg, st.ctx)
        st.history.append(HistoryPoint(0, val_loss=st.initial_loss))
        return
    try:
        state, st.best = load_checkpoint(resumed_from, st.params, st.optimizer, st.scheduler)
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint: say where it is and what to do
        where = st.ctx.checkpoint_origin() or resumed_from
        raise HQLError(f"node {st.node.id}: its checkpoint {where} cannot be read ({type(err).__name__}: {err}); "
                       f"delete that checkpoint folder (the node then starts from an older one, or from scratch) "
                       f"and run again with --resume: finished nodes are kept") from err
    st.step, st.best_loss = state["step"], state["best_loss"]
    st.history = [HistoryPoint.from_json(point) for point in state["history"]]
    st.initial_loss = state["initial_val_loss"]
    st.resumed_step = st.step  # (history restored from the checkpoint starts at step 0)
    log.info("node %s resumes at step %d from %s", st.node.id, st.step, resumed_from)
    st.progress(resumed_from=st.step)


def batches_from_step(st: TrainState):
    """Per optimizer step still to train, this worker's forward passes (its share of the step's global
    batch, cut into micro-batches; possibly none) as a StepBatch. Each epoch's order comes from its own seed."""
    sizes = src, tgt = ds_lib.example_sizes(st.train_data)
    train = st.cfg.train
    epoch, batches = None, []
    for step in range(st.step, st.total_steps):
        if step // st.steps_per_epoch != epoch:
            epoch = step // st.steps_per_epoch
            batches = st.plan.epoch_batches(sizes, seed=st.cfg.run.seed * 1000 + epoch)
        st.batch_rows = rows = batches[step % st.steps_per_epoch]
        share = batching.worker_share(rows, st.ctx.rank, st.ctx.world_size)
        parts = batching.micro_batches(share, train.micro_batch_size)
        seed = node_seed(st.cfg.run.seed, st.node.id)  # dropout masks per example: the same on any worker count
        micro = [dropout.tag(batching.collate(list(st.train_data.select(part)), st.pad_id,
                                              multiple=train.pad_to_multiple), seed, step, part)
                 for part in parts]
        yield StepBatch([to_device(b, st.ctx.device, non_blocking=train.host_sync == "log") for b in micro],
                        [sum(tgt[i] for i in part) for part in parts], sum(tgt[i] for i in rows),
                        sum(src[i] + tgt[i] for i in rows), rows)


def forward_loss(st: TrainState, batch: dict) -> torch.Tensor:
    """Mean token loss of one forward pass."""
    batch = dropout.use(st.model, batch)  # this micro-batch's example keys to the dropout sites
    if st.cfg.train.chunked_loss:  # the same loss without the batch's full-vocabulary logits
        return losses.seq2seq_lm_loss(st.model, batch, chunk_rows=st.cfg.train.chunked_loss)
    return st.model(**batch).loss


def train_step(st: TrainState, batch: StepBatch) -> torch.Tensor | float:
    """One optimizer step on the global batch (st.runner: hql_ray/training/step.py); returns its mean token loss,
    a float (train.host_sync step) or a device tensor that StepLosses reads later (log)."""
    loss = st.runner.step(batch)
    st.step += 1
    return loss


def when_due(st: TrainState, since_validation: LossMeter, since_point: LossMeter) -> bool:
    """After a step: a loss-curve point, progress, validation (best kept), report and checkpoint.
    -> True when the node pauses here (a checkpoint written for a resize: its run ends)."""
    step, last = st.step, st.step == st.total_steps
    validate = step % st.eval_every == 0 or last
    if step % st.curve_every == 0 and not validate:
        st.history.append(HistoryPoint(step, train_loss=since_point.take()))
    if step % st.cfg.train.log_every == 0 or last:
        st.progress(epoch=step / st.steps_per_epoch, loss=since_validation.mean())
    val = None
    if validate:
        val = validation_loss(st.model, st.val_data, st.pad_id, st.cfg, st.ctx)
        st.history.append(HistoryPoint(step, train_loss=since_point.take(), val_loss=val))
        since_validation.take()
        if val < st.best_loss:
            st.best_loss, st.best = val, snapshot(st.params)
        st.progress(val_loss=val)
    # Every validation is reported (with the checkpoint when one is due): Tune's ASHA ranks trials on these.
    # The last step always checkpoints: a worker lost during the evaluation that follows costs no training.
    extra = {} if val is None else {"val_loss": val}
    # The run is stopping (SIGTERM): a checkpoint now, asked at log steps (an agreed answer across workers).
    stopping = step % st.cfg.train.log_every == 0 and not last and st.ctx.checkpoint_requested()
    if step % st.ckpt_every == 0 or last or stopping:
        report_checkpoint(st, extra)
        if stopping:
            st.ctx.checkpoint_written(step)
    elif val is not None:
        st.ctx.report({"step": step, "best_val_loss": st.best_loss, **extra}, None)
    if st.tracker is not None and st.history[-1].step == step:
        st.tracker.point(st.history[-1], lr=st.scheduler.get_last_lr()[0])
    return stopping and st.ctx.pausing()


def report_checkpoint(st: TrainState, extra: dict) -> None:
    state = {"step": st.step, "best_loss": st.best_loss, "history": [h.to_json() for h in st.history],
             "initial_val_loss": st.initial_loss}
    st.ctx.report_checkpoint({"step": st.step, "best_val_loss": st.best_loss, **extra},
                             lambda path: save_checkpoint(path, st.params, st.best, st.optimizer, st.scheduler, state))


def node_metrics(st: TrainState) -> NodeMetrics:
    """What the node's training measured (its evaluation adds the scores)."""
    history = st.history
    return NodeMetrics(
        initial_val_loss=st.initial_loss,
        val_loss=st.best_loss if st.best is not None else history[-1].val_loss,
        train_loss=next((h.train_loss for h in reversed(history) if h.train_loss is not None), None),
        steps=st.total_steps,
        examples=len(st.train_data),
        validation_examples=len(st.val_data),
        skipped_examples=ds_lib.skipped_count(st.train_data) + ds_lib.skipped_count(st.val_data),
        # Examples cut at data.max_source_length / max_target_length (none without limits, the default).
        clipped_examples=ds_lib.clipped_counts(st.train_data),
        train_seconds=round(time.time() - st.started, 2),
        world_size=st.ctx.world_size,
        resumed_from_step=st.resumed_step,
    )


def evaluate(st: TrainState, metrics: NodeMetrics) -> None:
    """Generate and score on the node's languages' test sets (rank 0), as eval.at_nodes says; a failure is
    recorded in the metrics and never costs the trained adapter."""
    cfg, ctx = st.cfg, st.ctx
    if not (ctx.is_main and cfg.eval.generate and (cfg.eval.at_nodes == "all" or st.node.is_leaf)):
        return
    ctx.progress(Progress(node=st.node.id, phase="evaluate"))
    try:
        metrics.languages = evaluation.evaluate_node(st.model, st.tokenizer, cfg, st.settings, st.languages,
                                                     cfg.cache_dir, ctx.device, node_id=st.node.id,
                                                     progress=ctx.progress)
    except Exception as err:  # noqa: BLE001 - a failed evaluation must never discard the trained adapter
        log.exception("node %s: evaluation failed; the trained adapter is kept", st.node.id)
        metrics.evaluation_error = f"{type(err).__name__}: {err}"


def finish(st: TrainState) -> NodeResult:
    """The best step restored, the node's metrics, its evaluation, its adapter."""
    if st.best is not None:
        restore(st.params, st.best)  # keep the best step by validation loss
    metrics = node_metrics(st)
    evaluate(st, metrics)
    if st.tracker is not None:
        st.tracker.finish(metrics)
    state = handoff.full_state(st.model) if st.cfg.model.mode == "fft" else handoff.node_adapter_state(st.model)
    st.ctx.report({"done": True, "val_loss": metrics.val_loss}, None)
    return NodeResult(state if st.ctx.is_main else None, metrics, st.history)


def train_node(cfg: Config, node: NodeSpec, parent_chain: list[AdapterState] | None,
               ctx: NodeContext | None = None) -> NodeResult:
    """Train one node from its ancestors' adapters (`parent_chain`); rank 0's result holds the node's own
    adapter. Runs the same in a test, a loop or a Ray Train worker (`ctx` is the only difference)."""
    ctx = ctx or LocalContext()
    seed = node_seed(cfg.run.seed, node.id)
    torch.manual_seed(seed)  # the node's fresh LoRA: the same on every worker
    started = time.time()
    st = setup(cfg, node, parent_chain or [], ctx)
    # Dropout draws per example (hql_ray.training.dropout: the same on every worker), or torch's per worker.
    torch.manual_seed(seed + 1 + (0 if cfg.train.example_dropout else ctx.rank))
    st.started = started  # train_seconds counts the set-up too
    st.tracker = tracking.NodeTracker.open(cfg, node, ctx.rank, st.train_data, ctx.device)
    ok = False
    try:
        resume_or_start(st)
        if st.resumed_step is None:
            st.tracker.point(st.history[0])  # the untrained validation loss, step 0
        st.progress()
        losses = StepLosses(ctx.all_reduce_sum if ctx.world_size > 1 else None)
        since_validation, since_point = LossMeter(losses), LossMeter(losses)
        mark = time.perf_counter()
        for batch in batches_from_step(st):
            losses.add(train_step(st, batch))
            st.tracker.trained(st.batch_rows, time.perf_counter() - mark)
            if when_due(st, since_validation, since_point):
                ok = True  # paused for a resize: it goes on from this step's checkpoint on more workers
                return NodeResult(None, NodeMetrics(steps=st.step, world_size=ctx.world_size), st.history,
                                  paused_at=st.step)
            mark = time.perf_counter()
        result = finish(st)
        ok = True
        return result
    finally:
        st.tracker.close(ok)
