"""The node's optimizer step on its device: what `hql_ray.training.node.train_step` runs (docs/gpu.md).

Each part is behind a `train:` key, and each keeps the original's arithmetic unless switched:

- train.precision bf16: the forward and backward under torch.autocast(bfloat16); the LoRA weights, their
  gradients and the optimizer stay fp32 (master weights).
- train.host_sync log: nothing in the step waits for the device. The step's loss stays there (`StepLosses` reads
  every pending step at once, when a mean is asked for: once per logging interval); token counts come from the
  data's lengths on the host; batches are copied from pinned memory without blocking; and the attention masks
  are handed to transformers in 4-D, already built, so that it never reads the padding mask back
  (`padding_mask.all()` in masking_utils, once per encoder and once for the cross-attention).
- token weighting: each micro-batch's mean token loss counts with its share of the global batch's label tokens,
  so the summed gradients are those of the global batch's mean token loss, whatever the number of workers.
- several workers: `GradReducer` sums the gradients over workers in buckets launched while the backward runs.
- train.dequantized_base: the 4-bit base's frozen weights dequantized once (`DequantizedBase`), not per matmul.
- train.compile_blocks: regional compilation (`CompiledBlocks`): each T5 block compiled, one graph per kind of
  block reused by all 24 layers, during the training step only; eager with a warning if compiling fails.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from hql_ray.settings.config import TrainSection
from hql_ray.training import dropout

log = logging.getLogger(__name__)


# ---- one optimizer step's batch -----------------------------------------------------------------------
@dataclass
class StepBatch:
    """One optimizer step's work on this worker. The counts are the host's (from the data's lengths): weighting
    the losses needs no read from the device."""

    micro_batches: list[dict]  # this worker's share of the global batch, cut into forward passes, on the device
    label_tokens: list[int]  # label tokens of each micro-batch
    global_label_tokens: int  # label tokens of the whole global batch (every worker's share)
    real_tokens: int = 0  # non-pad source + target tokens of the global batch (throughput)
    rows: list[int] = field(default_factory=list)  # the global batch's example indices


def to_device(batch: dict, device: torch.device, non_blocking: bool = False) -> dict:
    """A collated batch on `device`; `non_blocking` on CUDA: copied from pinned memory without waiting."""
    if non_blocking and torch.device(device).type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


# ---- masks transformers never reads back ----------------------------------------------------------------
def prebuilt_masks(batch: dict, attn_implementation: str | None, dtype: torch.dtype) -> dict:
    """The batch with its 2-D padding mask as the 4-D mask transformers would build from it.

    transformers returns a 4-D mask as given; from a 2-D one it first asks `padding_mask.all()` (may the mask be
    skipped?), a host sync per call. For sdpa the mask is boolean (True = attend), for eager additive; both
    broadcast over heads and queries and give the same scores as transformers' own (checked in
    tests/test_step.py). The per-example dropout's attention (hql_ray.training.dropout) takes SDPA's masks. Other
    attention implementations keep the 2-D mask."""
    mask = batch.get("attention_mask")
    if attn_implementation == dropout.ATTENTION:
        attn_implementation = "sdpa"
    if mask is None or mask.dim() != 2 or attn_implementation not in ("sdpa", "eager"):
        return batch
    keep = mask.bool()[:, None, None, :]
    if attn_implementation == "eager":
        keep = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)
    return {**batch, "attention_mask": keep}


# ---- losses read once per logging interval ----------------------------------------------------------------
class StepLosses:
    """Each optimizer step's mean token loss, in step order. Device values are read back together when a value
    is asked for (`floats`): one host sync, and on several workers one all-reduce (`reduce`), per read."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.values: list[float] = []
        self.pending: list[torch.Tensor] = []
        self.reduce = reduce

    def __len__(self) -> int:
        return len(self.values) + len(self.pending)

    def add(self, loss: torch.Tensor | float) -> None:
        if isinstance(loss, torch.Tensor):
            self.pending.append(loss.detach().reshape(()).double())
        else:
            self.floats()  # keep the order
            self.values.append(float(loss))

    def floats(self) -> list[float]:
        if self.pending:
            stacked = torch.stack(self.pending)
            if self.reduce is not None:
                stacked = self.reduce(stacked)
            self.values.extend(stacked.tolist())
            self.pending.clear()
        return self.values


# ---- gradients summed over workers while the backward runs --------------------------------------------------
class GradReducer:
    """Sums the trainable gradients over workers, bucket by bucket, each bucket launched (asynchronously) as soon
    as the backward has produced all its gradients: DDP's scheme without its wrapper.

    Buckets hold ~`bucket_mb` of parameters in reverse order (the backward's order) and are launched in bucket
    order on every worker, so the collectives match across workers whatever the order the hooks fire in; a
    worker with nothing to train this step launches them all at `finish`. bucket_mb 0: one bucket, reduced at
    `finish` (one all-reduce after the backward). The gradients are already token-weighted (`StepRunner`): a
    sum is all that is left to do."""

    def __init__(self, params: list[torch.nn.Parameter], all_reduce_async, bucket_mb: float):
        self.params = params
        self.all_reduce_async = all_reduce_async
        limit = bucket_mb * 2**20 if bucket_mb else float("inf")
        self.buckets: list[list[int]] = [[]]
        size = 0
        for i in reversed(range(len(params))):
            nbytes = params[i].numel() * 4
            if self.buckets[-1] and size + nbytes > limit:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(i)
            size += nbytes
        self.bucket_of = {id(params[i]): b for b, bucket in enumerate(self.buckets) for i in bucket}
        self.handles = [] if not bucket_mb else [p.register_post_accumulate_grad_hook(self._ready) for p in params]
        self.armed = False
        self._reset()

    def _reset(self) -> None:
        self.ready = [0] * len(self.buckets)
        self.next = 0
        self.launched: list[tuple[list[int], torch.Tensor, object]] = []

    def arm(self) -> None:
        """The next backward is the step's last on this worker: its gradients are final as they come."""
        self.armed = True

    def _ready(self, param: torch.nn.Parameter) -> None:
        if not self.armed:
            return
        self.ready[self.bucket_of[id(param)]] += 1
        while self.next < len(self.buckets) and self.ready[self.next] == len(self.buckets[self.next]):
            self._launch(self.next)

    def _launch(self, b: int) -> None:
        bucket = self.buckets[b]
        grads = [self.params[i].grad if self.params[i].grad is not None else torch.zeros_like(self.params[i])
                 for i in bucket]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        self.launched.append((bucket, flat, self.all_reduce_async(flat)))
        self.next = b + 1

    def finish(self) -> None:
        """Launch what is left, wait for every bucket and put the sums back as the gradients."""
        while self.next < len(self.buckets):
            self._launch(self.next)
        for bucket, flat, handle in self.launched:
            if handle is not None:
                handle.wait()
            offset = 0
            for i in bucket:
                p = self.params[i]
                p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
        self.armed = False
        self._reset()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


# ---- the 4-bit base's weights dequantized once --------------------------------------------------------------
def dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' Linear4bit.forward with the weight it would dequantize at every call, dequantized once:
    the input in the compute dtype, the same product as its default path (dequantize, then F.linear, which
    autocast sees there too), the output in the input's dtype."""
    bias = None if self.bias is None else self.bias.to(self.dequantized.dtype)
    return torch.nn.functional.linear(x.to(self.dequantized.dtype), self.dequantized, bias).to(x.dtype)


class DequantizedBase:
    """train.dequantized_base: each 4-bit linear layer's frozen weight dequantized once, kept on the device in the
    compute dtype, and used during the training step instead of bitsandbytes' dequantize-and-multiply (twice per
    layer per step, three times with checkpointing, each a few kernels and Python calls). The same numbers; the
    memory of the base in bf16 (+~1 GB at mT5-large) instead of NF4. The weights are buffers of their modules
    (not saved), so compiled blocks treat them like parameters and every layer reuses one graph."""

    def __init__(self, model):
        try:
            import bitsandbytes.functional as bnbf
            from bitsandbytes.nn import Linear4bit
        except ImportError:  # no bitsandbytes: no 4-bit layers
            self.modules = []
            return
        self.modules = [m for m in model.modules() if isinstance(m, Linear4bit)]
        with torch.no_grad():
            for m in self.modules:
                state = m.weight.quant_state
                weight = bnbf.dequantize_4bit(m.weight.data, state).to(m.compute_dtype or state.dtype)
                m.register_buffer("dequantized", weight, persistent=False)

    @contextlib.contextmanager
    def active(self):
        for m in self.modules:
            m.forward = dequantized_forward.__get__(m)
        try:
            yield
        finally:
            for m in self.modules:
                del m.forward

    def close(self) -> None:
        for m in self.modules:
            del m.dequantized
        self.modules = []


# ---- regional compilation -----------------------------------------------------------------------------------
def transformer_blocks(model) -> list[torch.nn.Module]:
    """The encoder's and the decoder's blocks of a (PEFT-wrapped) T5/mT5 model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [block for stack in (base.encoder, base.decoder) for block in stack.block]


class CompiledBlocks:
    """Every T5 block's forward compiled (torch.compile, dynamic shapes). The blocks share their code, so dynamo
    compiles one graph per kind of block (encoder/decoder, with/without the relative position bias) and the
    other layers reuse it: a few block-sized compiles instead of one of the whole 48-layer model. The compiled
    forwards are in place only inside `active()` (the training step): validation and generation, with their
    other modes and caches, stay eager and cost no recompiles."""

    def __init__(self, model, backend: str, mode: str | None = None):
        self.blocks = transformer_blocks(model)
        self.forwards = [torch.compile(block.forward, backend=backend, dynamic=True, mode=mode)
                         for block in self.blocks]
        self.enabled = True

    @contextlib.contextmanager
    def active(self):
        if not self.enabled:
            yield
            return
        for block, forward in zip(self.blocks, self.forwards):
            block.forward = forward  # an instance attribute over the class's forward
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward

    def fall_back(self, err: BaseException) -> None:
        self.enabled = False
        message = f"train.compile_blocks: compiling failed ({why(err)}); the node trains eagerly"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        log.warning(message)


def why(err: BaseException) -> str:
    """One line naming an error (dynamo's wrapper says 'backend=... raised:' and the cause on the next line)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith("raised:"):
        lines = lines[1:]
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def compile_mode(cuda_graphs: bool, device: torch.device) -> str | None:
    """torch.compile's mode: reduce-overhead (CUDA graphs) where asked and on CUDA; else the default."""
    if not cuda_graphs:
        return None
    if torch.device(device).type != "cuda":
        warnings.warn("train.cuda_graphs: CUDA graphs need a CUDA device; compiled without them", RuntimeWarning,
                      stacklevel=2)
        return None
    return "reduce-overhead"


# ---- the step ----------------------------------------------------------------------------------------------
class StepRunner:
    """One optimizer step: forward and backward of each micro-batch (token-weighted), the gradients summed over
    workers, clipped, the optimizer and the schedule stepped, the gradients dropped.

    `step` returns the global batch's mean token loss: a float read at once (train.host_sync step, the
    original's), or a device tensor for `StepLosses` (log). `phase(name)` wraps each phase (forward, backward,
    loss, reduce, clip, optimizer, zero_grad): benchmarks/step_counts.py counts dispatcher calls per phase with it."""

    def __init__(self, model, params: list[torch.nn.Parameter], optimizer, scheduler, ctx, train: TrainSection,
                 loss_fn: Callable[[dict], torch.Tensor]):
        self.model, self.params, self.optimizer, self.scheduler, self.ctx = model, params, optimizer, scheduler, ctx
        self.train, self.loss_fn = train, loss_fn
        self.sync_free = train.host_sync == "log"
        self.bf16 = train.precision == "bf16"
        self.reducer = (GradReducer(params, ctx.all_reduce_sum_async, train.grad_bucket_mb)
                        if ctx.world_size > 1 else None)
        self.dequantized = DequantizedBase(model) if train.dequantized_base else None
        self.compiled = (CompiledBlocks(model, train.compile_backend, compile_mode(train.cuda_graphs, ctx.device))
                         if train.compile_blocks else None)
        self.attn_implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.mask_dtype = embeddings.weight.dtype if embeddings is not None else torch.float32
        self.phase: Callable[[str], contextlib.AbstractContextManager] = lambda name: contextlib.nullcontext()

    def step(self, batch: StepBatch) -> torch.Tensor | float:
        if self.compiled is None or not self.compiled.enabled:
            loss = self._step(batch)
        else:
            try:
                loss = self._step(batch)
            except Exception as err:  # noqa: BLE001 - compile failures come in many types: train eagerly
                self._discard()
                self.compiled.fall_back(err)
                loss = self._step(batch)
        if self.sync_free:
            return loss
        with self.phase("loss"):
            if self.ctx.world_size > 1:
                self.ctx.all_reduce_sum(loss)
            return float(loss)  # the original's host sync every step

    def _discard(self) -> None:
        """Drop a failed step's partial gradients (the reducer's buckets completed: the workers stay matched)."""
        if self.reducer is not None:
            self.reducer.finish()
        self.optimizer.zero_grad(set_to_none=True)

    def _step(self, batch: StepBatch) -> torch.Tensor:
        loss = self.forward_backward(batch)
        if self.reducer is not None:
            with self.phase("reduce"):
                self.reducer.finish()
        if self.train.max_grad_norm:
            with self.phase("clip"):
                torch.nn.utils.clip_grad_norm_(self.params, self.train.max_grad_norm)
        with self.phase("optimizer"):
            self.optimizer.step()
            self.scheduler.step()
        with self.phase("zero_grad"):
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def forward_backward(self, batch: StepBatch) -> torch.Tensor:
        """This worker's share of the global mean token loss, its gradients accumulated (not yet summed)."""
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device) if not batch.micro_batches else None
        n_global = max(batch.global_label_tokens, 1)
        with self.regions():
            for i, (micro, n) in enumerate(zip(batch.micro_batches, batch.label_tokens)):
                if self.reducer is not None and i == len(batch.micro_batches) - 1:
                    self.reducer.arm()
                weight = n / n_global  # 1.0 for one pass over the whole batch: the original's arithmetic
                with self.phase("forward"), self.autocast():
                    loss = self.loss_fn(self.masks(micro))
                with self.phase("backward"):
                    (loss if weight == 1.0 else loss * weight).backward()
                with self.phase("loss"):
                    part = loss.detach().double() if weight == 1.0 else loss.detach().double() * weight
                    total = part if total is None else total + part
        if self.reducer is not None and not batch.micro_batches:
            self.reducer.arm()  # nothing to train on this worker: finish() sends zeros
        return total

    @contextlib.contextmanager
    def regions(self):
        """The dequantized base and the compiled blocks, in place for the step only."""
        with contextlib.ExitStack() as stack:
            for part in (self.dequantized, self.compiled):
                if part is not None:
                    stack.enter_context(part.active())
            yield

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.ctx.device).type, dtype=torch.bfloat16)

    def masks(self, batch: dict) -> dict:
        if not self.sync_free:
            return batch
        return prebuilt_masks(batch, self.attn_implementation, self.mask_dtype)

    def close(self) -> None:
        """Remove the reducer's hooks (a runner replaced by another: the GPU check's rungs)."""
        if self.reducer is not None:
            self.reducer.close()
        if self.dequantized is not None:
            self.dequantized.close()
