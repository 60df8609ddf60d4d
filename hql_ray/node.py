"""One node of the tree: train on the union of its languages, keep the best step, evaluate. No Ray here.

`train_node(cfg, node, parent_chain, ctx)` takes plain dicts (the run config, the node, the parent's
adapters) and returns a plain dict (the node's adapter and metrics), so it runs the same in a test,
in a loop, or inside a Ray Train worker (`hql_ray.ray_worker`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.optimization import Adafactor, get_linear_schedule_with_warmup

from hql_ray import dataset as ds_lib
from hql_ray import evaluation, handoff, modeling
from hql_ray.config import Config
from hql_ray.context import LocalContext, NodeContext

log = logging.getLogger(__name__)


def cache_dir_for(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir or Path(cfg.run.output_dir) / ".cache").absolute()


def build_model(cfg: Config, parent_chain: list[dict], device: torch.device):
    """Base model + the node's trainable part, started from the parent's adapters."""
    base_path = modeling.resolve_base_model(cfg.model.base, cache_dir_for(cfg) / "models")
    model = modeling.load_base_model(
        base_path,
        cfg.model.mode,
        device,
        double_quant=cfg.model.double_quant,
        quant_type=cfg.model.quant_type,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    if cfg.model.mode == "fft":
        if parent_chain:
            handoff.load_full_state(model, parent_chain[-1])
        return model
    lora = modeling.LoraSettings(
        r=cfg.model.lora.r,
        alpha=cfg.lora_alpha,
        use_rslora=cfg.model.lora.use_rslora,
        dropout=cfg.model.lora.dropout,
        target_modules=tuple(cfg.model.lora.target_modules),
    )
    return handoff.attach_node_adapter(model, lora, cfg.model.handoff, parent_chain or [])


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in params.items()}


def restore(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))


def batches_for_epoch(lengths, cfg: Config, epoch: int, ctx: NodeContext) -> list[list[int]]:
    batches = ds_lib.length_grouped_batches(
        lengths, cfg.train.batch_size, seed=cfg.run.seed * 1000 + epoch, group=cfg.train.group_by_length
    )
    return ds_lib.shard_batches(batches, ctx.rank, ctx.world_size)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def validation_loss(model, data, pad_id: int, cfg: Config, ctx: NodeContext) -> float:
    """Token-weighted mean loss over the validation set, summed across workers."""
    was_training = model.training
    model.eval()
    lengths = ds_lib.example_lengths(data)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    mine = order[ctx.rank :: ctx.world_size]
    total = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), cfg.eval.batch_size):
        rows = data.select(mine[start : start + cfg.eval.batch_size])
        batch = to_device(ds_lib.collate(list(rows), pad_id), ctx.device)
        loss = model(**batch).loss.float()
        n_tokens = int((batch["labels"] != -100).sum())
        total += torch.tensor([loss.item() * n_tokens, n_tokens], dtype=torch.float64)
    ctx.all_reduce_sum(total)
    model.train(was_training)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def sync_gradients(params: list[torch.nn.Parameter], ctx: NodeContext) -> None:
    """Average gradients across data-parallel workers (one flat all-reduce, no DDP wrapper needed)."""
    if ctx.world_size <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    ctx.all_reduce_sum(flat)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n


# ---- checkpoints (for retry after a worker failure) ----------------------------------------------
def save_checkpoint(path: Path, params, best, optimizer, scheduler, state: dict) -> None:
    save_file(snapshot(params), str(path / "trainable.safetensors"))
    if best is not None:
        save_file(best, str(path / "best.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / "optim.pt")
    (path / "state.json").write_text(json.dumps(state))


def load_checkpoint(path: Path, params, optimizer, scheduler) -> tuple[dict, dict | None]:
    restore(params, load_file(str(path / "trainable.safetensors")))
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None
    optim = torch.load(path / "optim.pt", weights_only=True)  # tensors and numbers only, no pickled code
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return json.loads((path / "state.json").read_text()), best


# ---- the node -----------------------------------------------------------------------------------
def train_node(cfg_dict: dict, node: dict, parent_chain: list[dict] | None, ctx: NodeContext | None = None) -> dict:
    """Train one node; returns {"adapter", "metrics", "history"} (adapter: the node's own state)."""
    ctx = ctx or LocalContext()
    cfg = Config.from_dict(cfg_dict)
    torch.manual_seed(cfg.run.seed)
    started = time.time()
    languages = [(code, name) for code, name in node["languages"]]
    settings = ds_lib.DataSettings.from_config(cfg)
    tokenizer = modeling.load_tokenizer(cfg.model.base)
    cache = cache_dir_for(cfg)
    train_data = ds_lib.node_dataset(settings, languages, "train", tokenizer, cache)
    val_data = ds_lib.node_dataset(settings, languages, "validation", tokenizer, cache)
    pad_id = tokenizer.pad_token_id

    model = build_model(cfg, parent_chain or [], ctx.device)
    model.train()
    params = trainable(model)
    param_list = list(params.values())
    optimizer = Adafactor(
        param_list,
        lr=cfg.train.learning_rate,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        weight_decay=cfg.train.weight_decay,
    )
    lengths = ds_lib.example_lengths(train_data)
    steps_per_epoch = len(batches_for_epoch(lengths, cfg, 0, ctx))
    total_steps = max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.train.warmup_steps, total_steps)
    eval_every = cfg.train.eval_every or steps_per_epoch
    ckpt_every = cfg.train.checkpoint_every or eval_every
    curve_every = max(cfg.train.log_every, total_steps // 100, 1)

    step, best_loss, best, history = 0, math.inf, None, []
    resumed_step = None
    resumed_from = ctx.latest_checkpoint()
    if resumed_from is not None:
        state, best = load_checkpoint(resumed_from, params, optimizer, scheduler)
        step, best_loss, history = state["step"], state["best_loss"], state["history"]
        initial_loss = state["initial_val_loss"]
        resumed_step = step  # (history restored from the checkpoint starts at step 0)
        log.info("node %s resumes at step %d from %s", node["id"], step, resumed_from)
    else:
        initial_loss = validation_loss(model, val_data, pad_id, cfg, ctx)
        history.append({"step": 0, "val_loss": initial_loss})

    ctx.progress({"node": node["id"], "step": step, "total_steps": total_steps, "phase": "train"})
    epoch = step // steps_per_epoch
    batches = batches_for_epoch(lengths, cfg, epoch, ctx)
    running, running_n = 0.0, 0  # since the last validation
    window, window_n = 0.0, 0  # since the last loss-curve point
    while step < total_steps:
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            batches = batches_for_epoch(lengths, cfg, epoch, ctx)
        rows = train_data.select(batches[step % steps_per_epoch])
        batch = to_device(ds_lib.collate(list(rows), pad_id), ctx.device)
        loss = model(**batch).loss
        loss.backward()
        sync_gradients(param_list, ctx)
        if cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(param_list, cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        running += float(loss.detach())
        running_n += 1
        window += float(loss.detach())
        window_n += 1

        last = step == total_steps
        if step % curve_every == 0 and not (step % eval_every == 0 or last):
            # Loss curve points between validations, at most ~100 per node to keep the manifest small.
            history.append({"step": step, "train_loss": window / window_n})
            window, window_n = 0.0, 0
        if step % cfg.train.log_every == 0 or last:
            ctx.progress(
                {"node": node["id"], "step": step, "total_steps": total_steps, "epoch": step / steps_per_epoch,
                 "loss": running / running_n, "phase": "train"}
            )
        validated = step % eval_every == 0 or last
        if validated:
            val = validation_loss(model, val_data, pad_id, cfg, ctx)
            history.append({"step": step, "train_loss": window / max(window_n, 1), "val_loss": val})
            running, running_n, window, window_n = 0.0, 0, 0.0, 0
            if val < best_loss:
                best_loss, best = val, snapshot(params)
            ctx.progress({"node": node["id"], "step": step, "total_steps": total_steps, "val_loss": val, "phase": "train"})
        # Every validation is reported (with the checkpoint when one is due): Tune's ASHA ranks trials on these.
        if step % ckpt_every == 0 and not last:
            _report_checkpoint(ctx, params, best, optimizer, scheduler, step, best_loss, history, initial_loss,
                               {"val_loss": val} if validated else {})
        elif validated and not last:
            ctx.report({"step": step, "best_val_loss": best_loss, "val_loss": val}, None)

    if best is not None:
        restore(params, best)  # keep the best step by validation loss
    train_seconds = time.time() - started

    metrics = {
        "initial_val_loss": initial_loss,
        "val_loss": best_loss if best is not None else history[-1].get("val_loss"),
        "train_loss": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
        "steps": total_steps,
        "examples": len(train_data),
        "validation_examples": len(val_data),
        "skipped_examples": ds_lib.skipped_count(train_data) + ds_lib.skipped_count(val_data),
        "train_seconds": round(train_seconds, 2),
        "world_size": ctx.world_size,
        "resumed_from_step": resumed_step,
    }
    do_eval = cfg.eval.generate and (cfg.eval.at_nodes == "all" or node.get("is_leaf"))
    if ctx.is_main and do_eval:
        ctx.progress({"node": node["id"], "phase": "evaluate"})
        metrics["languages"] = evaluate_node(model, tokenizer, cfg, settings, languages, cache, ctx.device)
    state = handoff.full_state(model) if cfg.model.mode == "fft" else handoff.node_adapter_state(model)
    ctx.report({"done": True, "val_loss": metrics["val_loss"]}, None)
    return {"adapter": state if ctx.is_main else None, "metrics": metrics, "history": history}


def _report_checkpoint(ctx, params, best, optimizer, scheduler, step, best_loss, history, initial_loss,
                       extra: dict | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="hql-ckpt-") as tmp:
        path = None
        if ctx.is_main:
            path = Path(tmp)
            state = {"step": step, "best_loss": best_loss, "history": history, "initial_val_loss": initial_loss}
            save_checkpoint(path, params, best, optimizer, scheduler, state)
        ctx.report({"step": step, "best_val_loss": best_loss, **(extra or {})}, path)


def evaluate_node(model, tokenizer, cfg: Config, settings, languages, cache, device) -> dict:
    """Generate on each language's test split and score it (BLEU/chrF++ or smatch)."""
    model.eval()
    results = {}
    for code, name in languages:
        test = ds_lib.language_dataset(settings, code, name, "test", tokenizer, cache)
        results[code] = evaluation.evaluate_language(
            model,
            tokenizer,
            test["source"],
            test["target"],
            direction=cfg.data.direction,
            batch_size=cfg.eval.batch_size,
            max_new_tokens=cfg.eval.max_new_tokens,
            max_source_length=cfg.data.max_source_length,
            device=device,
        )
    return results
