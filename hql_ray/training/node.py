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
import tempfile
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
from hql_ray.data.batch_plan import BatchPlan, global_batch
from hql_ray.data import dataset as ds_lib
from hql_ray.scoring import evaluation
from hql_ray.training import dropout, handoff, losses, modeling, tracking
from hql_ray.settings.config import Config
from hql_ray.settings.errors import HQLError
from hql_ray.settings.handoffs import handoff_for
from hql_ray.training.context import LocalContext, NodeContext
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


def batches_for_epoch(lengths, cfg: Config, epoch: int, world_size: int) -> list[list[int]]:
    """The epoch's optimizer-step batches, the same on every worker (each trains its share of each)."""
    return batching.length_grouped_batches(
        lengths, global_batch(cfg.train, world_size), seed=cfg.run.seed * 1000 + epoch,
        group=cfg.train.group_by_length,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


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


def sync_gradients(params: list[torch.nn.Parameter], ctx: NodeContext, loss_sum: torch.Tensor,
                   tokens: torch.Tensor) -> float:
    """Gradients of the summed token losses -> of the global batch's mean token loss; returns that loss.

    Each worker's backward summed its tokens' losses (`loss_sum` over `tokens` label tokens); one flat
    all-reduce adds up gradients, loss and tokens across workers (no DDP wrapper needed), and dividing
    by the global token count gives what one worker would get on the whole batch."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if ctx.world_size <= 1:
        n = float(tokens)
        torch._foreach_div_(grads, max(n, 1.0))
        for p, g in zip(params, grads):
            p.grad = g
        return float(loss_sum) / max(n, 1.0)
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [loss_sum.reshape(1).float().to(grads[0].device), tokens.reshape(1).float().to(grads[0].device)])
    ctx.all_reduce_sum(flat)
    n = max(float(flat[-1]), 1.0)
    flat /= n
    offset = 0
    for p, g in zip(params, grads):
        size = g.numel()
        p.grad = flat[offset : offset + size].view_as(g).to(g.dtype)
        offset += size
    return float(flat[-2])


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
    """Mean training loss since the meter was last read (`take`)."""

    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.n += 1

    def mean(self) -> float:
        return self.total / max(self.n, 1)

    def take(self) -> float:
        value = self.mean()
        self.total, self.n = 0.0, 0
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
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    ckpt_every: int
    curve_every: int  # loss-curve points between validations: at most ~100 per node
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
    model = dropout.install(build_model(cfg, parent_chain, ctx.device))  # masks per example, not per worker
    model.train()
    params = trainable(model)
    optimizer = make_optimizer(cfg, list(params.values()))
    plan = BatchPlan.of(cfg.train, len(train_data), ctx.world_size)
    steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
    eval_every = cfg.train.eval_every or steps_per_epoch
    return TrainState(
        cfg, ctx, node, languages, settings, tokenizer, train_data, val_data, model, params, optimizer,
        get_linear_schedule_with_warmup(optimizer, cfg.train.warmup_steps, total_steps),
        steps_per_epoch, total_steps, eval_every, ckpt_every=cfg.train.checkpoint_every or eval_every,
        curve_every=max(cfg.train.log_every, total_steps // 100, 1),
    )


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
    batch, cut into micro-batches; possibly none). Each epoch's order comes from its own seed."""
    lengths = ds_lib.example_lengths(st.train_data)
    epoch, batches = None, []
    for step in range(st.step, st.total_steps):
        if step // st.steps_per_epoch != epoch:
            epoch = step // st.steps_per_epoch
            batches = batches_for_epoch(lengths, st.cfg, epoch, st.ctx.world_size)
        st.batch_rows = batches[step % st.steps_per_epoch]
        share = batching.worker_share(st.batch_rows, st.ctx.rank, st.ctx.world_size)
        seed = node_seed(st.cfg.run.seed, st.node.id)
        yield [to_device(dropout.tag(batching.collate(list(st.train_data.select(rows)), st.pad_id), seed, step, rows),
                         st.ctx.device)
               for rows in batching.micro_batches(share, st.cfg.train.micro_batch_size)]


def forward_loss(st: TrainState, batch: dict) -> torch.Tensor:
    """Mean token loss of one forward pass."""
    batch = dropout.use(st.model, batch)  # this micro-batch's example keys to the dropout sites
    if st.cfg.train.chunked_loss:  # the same loss without the batch's full-vocabulary logits
        return losses.seq2seq_lm_loss(st.model, batch, chunk_rows=st.cfg.train.chunked_loss)
    return st.model(**batch).loss


def train_step(st: TrainState, micro_batches: list[dict]) -> float:
    """One optimizer step on the global batch; returns its mean token loss."""
    params = list(st.params.values())
    if st.ctx.world_size == 1 and len(micro_batches) == 1:  # the whole batch in one pass: nothing to add up
        loss = forward_loss(st, micro_batches[0])
        loss.backward()
        value = float(loss.detach())
    else:
        # Summed on the device: no host sync per micro-batch (sync_gradients reads them once).
        loss_sum = torch.zeros((), dtype=torch.float64, device=st.ctx.device)
        tokens = torch.zeros((), dtype=torch.float64, device=st.ctx.device)
        for batch in micro_batches:
            n = (batch["labels"] != -100).sum()
            loss = forward_loss(st, batch)
            (loss * n).backward()
            loss_sum += loss.detach().double() * n
            tokens += n
        value = sync_gradients(params, st.ctx, loss_sum, tokens)
    if st.cfg.train.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, st.cfg.train.max_grad_norm)
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    return value


def when_due(st: TrainState, since_validation: LossMeter, since_point: LossMeter) -> None:
    """After a step: a loss-curve point, progress, validation (best kept), report and checkpoint."""
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


def report_checkpoint(st: TrainState, extra: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="hql-ckpt-") as tmp:
        path = None
        if st.ctx.is_main:
            path = Path(tmp)
            state = {"step": st.step, "best_loss": st.best_loss, "history": [h.to_json() for h in st.history],
                     "initial_val_loss": st.initial_loss}
            save_checkpoint(path, st.params, st.best, st.optimizer, st.scheduler, state)
        st.ctx.report({"step": st.step, "best_val_loss": st.best_loss, **extra}, path)


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
    torch.manual_seed(seed + 1)  # (dropout draws per example, hql_ray.training.dropout: the same on every worker)
    st.started = started  # train_seconds counts the set-up too
    st.tracker = tracking.NodeTracker.open(cfg, node, ctx.rank, st.train_data, ctx.device)
    ok = False
    try:
        resume_or_start(st)
        if st.resumed_step is None:
            st.tracker.point(st.history[0])  # the untrained validation loss, step 0
        st.progress()
        since_validation, since_point = LossMeter(), LossMeter()
        mark = time.perf_counter()
        for batch in batches_from_step(st):
            loss = train_step(st, batch)
            st.tracker.trained(st.batch_rows, time.perf_counter() - mark)
            since_validation.add(loss)
            since_point.add(loss)
            when_due(st, since_validation, since_point)
            mark = time.perf_counter()
        result = finish(st)
        ok = True
        return result
    finally:
        st.tracker.close(ok)
