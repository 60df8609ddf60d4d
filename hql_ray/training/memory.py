"""GPU memory of a node's training step, estimated on any machine from the model's shapes.

Two parts, both without a GPU and without weights:
- **static** (`static_bytes`): what stays on the GPU through the step, counted from the model built on
  the meta device: the 4-bit base as bitsandbytes stores it (NF4/FP4 linears at 0.5 byte per weight
  plus their block scales; `wo` kept in fp32 and the embeddings and head in the compute dtype, as
  transformers loads MT5 in 4-bit), the frozen ancestors in the compute dtype (`handoff.hold_frozen_in`),
  the trainable LoRA in fp32 with its fp32 gradients, and Adafactor's factored second moments.
  Checked against the one GPU measurement (benchmarks/README.md, gpu_qlora): mT5-large with LoRA r=256
  loads as 2.84 GiB; this counts 2.84 GiB.
- **activations** (`activation_bytes`): the peak of the tensors one forward + backward creates, measured
  by running the step on the meta device under a dispatch mode that adds up every storage while it lives.
  This is an upper bound for the GPU: on meta, attention runs as eager matmuls that keep the
  (batch, heads, query, key) scores; a CUDA memory-efficient attention kernel does not.

The estimate is `static + activations` plus the CUDA context (not counted: ~0.5-1 GB per process).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hql_ray.data.batch_plan import BatchPlan
from hql_ray.training import flops
from hql_ray.training import modeling
from hql_ray.training.tiny_pretrain import BPE_VOCAB
from hql_ray.settings.config import Config, LoraShape

GIB = 2**30
# bitsandbytes 4-bit: one absmax per 64 weights, fp32; with double quantization an 8-bit absmax per 64
# weights plus an fp32 scale per 256 blocks.
BLOCK = 64


@dataclass(frozen=True)
class Shapes:
    """Parameter counts of the base by how a 4-bit load stores them, and LoRA's per rank."""

    quantized: int  # linear weights stored in 4 bits
    fp32_kept: int  # MT5's `wo` (`_keep_in_fp32_modules`)
    other: int  # embeddings, head, norms, relative attention bias: in the compute dtype
    lora_per_rank: int  # LoRA parameters per unit of rank over every target module
    lora_modules: int  # LoRA-wrapped linears (Adafactor keeps rows + columns of A and B: in + out + 2r each)


def base_model_config(base: str, models_dir=None, local_only: bool = True):
    """The base model's config, with no weights and no download: the built-in tiny bases, mT5-large's
    written out (flops.py), a local folder or the Hugging Face cache; raises where it is not known here.
    `models_dir`: where the demo's pre-trained base is built (its config once built); `local_only=False`
    lets another hub name be fetched (its config only)."""
    import os

    from transformers import AutoConfig

    if base == "tiny":
        return modeling.tiny_config()
    if base == "tiny-pretrained":
        built = models_dir / modeling.TINY_PRETRAINED_DIR_NAME if models_dir is not None else None
        if built is not None and (built / "config.json").is_file():
            return AutoConfig.from_pretrained(str(built))
        return modeling.tiny_config(vocab=BPE_VOCAB)  # (the vocabulary does not change the LoRA's shapes)
    if base == "google/mt5-large":
        return flops.mt5_config()
    return AutoConfig.from_pretrained(os.path.expanduser(base), local_files_only=local_only)


def _meta_model(base, dtype: torch.dtype):
    """The base (a name, or its config) on the meta device as a 4-bit load holds it: `dtype` weights,
    `wo` in fp32, all frozen."""
    from transformers import AutoModelForSeq2SeqLM

    config = base_model_config(base) if isinstance(base, str) else base
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager")
    finally:
        torch.set_default_dtype(previous)
    for stack in (getattr(model, "encoder", None), getattr(model, "decoder", None)):
        if stack is not None and hasattr(model, "shared"):
            stack.embed_tokens = model.shared  # one table, as in the checkpoint (see flops.meta_model)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in keep:
            module.weight = torch.nn.Parameter(torch.empty(module.weight.shape, dtype=torch.float32, device="meta"))
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=8)
def shapes(base: str, target_modules: tuple[str, ...]) -> Shapes:
    return shapes_of(base, target_modules)


def shapes_of(base, target_modules: tuple[str, ...]) -> Shapes:
    """`shapes` for a base given by name or by its transformers config (not cached). LoRA's count is
    PEFT's: every nn.Linear but the head whose last name is a target gets A (r x in) and B (out x r)."""
    model = _meta_model(base, torch.bfloat16)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    head = model.get_output_embeddings()
    quantized = fp32_kept = lora_per_rank = factored = 0
    seen = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        seen.add(id(module.weight))
        leaf = name.split(".")[-1]
        if leaf in keep:
            fp32_kept += module.weight.numel()
        else:
            quantized += module.weight.numel()
        if leaf in target_modules:
            lora_per_rank += module.in_features + module.out_features
            factored += 1
    other = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in seen)
    return Shapes(quantized, fp32_kept, other, lora_per_rank, factored)


def _dtype(cfg: Config) -> torch.dtype:
    """The compute dtype on a GPU: model.compute_dtype, "auto" = bf16."""
    return torch.bfloat16 if cfg.model.compute_dtype == "auto" else getattr(torch, cfg.model.compute_dtype)


def static_bytes(cfg: Config, frozen_ranks: list[int]) -> dict[str, int]:
    """Bytes that stay on the GPU through a step of a node that holds frozen adapters of these ranks beside
    its own (`HandOff.frozen_ranks`: its ancestors' in stack mode, none otherwise)."""
    lora = cfg.model.lora
    s = shapes(cfg.model.base, tuple(lora.target_modules))
    compute = torch.empty((), dtype=_dtype(cfg)).element_size()
    if cfg.model.mode == "qlora":
        scales = (1 + 4 / 256) if cfg.model.double_quant else 4  # bytes of block scales per 64 weights
        base = int(s.quantized * 0.5 + s.quantized / BLOCK * scales) + s.fp32_kept * 4 + s.other * compute
    else:
        base = (s.quantized + s.other) * compute + s.fp32_kept * 4
    frozen = sum(frozen_ranks) * s.lora_per_rank * compute
    trainable = lora.r * s.lora_per_rank * 4
    return {"base": base, "frozen_ancestors": frozen, "lora": trainable, "lora_grads": trainable,
            "optimizer": (s.lora_per_rank + 2 * lora.r * s.lora_modules) * 4}


class PeakStorage(TorchDispatchMode):
    """Adds up the bytes of every storage an op creates while it is alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self._refs[key] = weakref.ref(storage, lambda _ref, k=key: self._free(k))
                    self.peak = max(self.peak, self.current)
        return out


def activation_bytes(cfg: Config, frozen_ranks: list[int], batch: int, source_len: int, target_len: int,
                     checkpointing: bool = True) -> int:
    """Peak bytes created by one forward + backward of a batch of `batch` examples padded to these lengths
    (gradients of the trainable LoRA excluded: they are in `static_bytes`). Meta device: ~20-60 s on a CPU."""
    from peft import get_peft_model

    lora: LoraShape = cfg.model.lora
    model = _meta_model(cfg.model.base, _dtype(cfg))
    with torch.device("meta"):
        peft_model = get_peft_model(model, lora.to_peft(), adapter_name="node")
        if frozen_ranks:
            frozen = LoraShape(sum(frozen_ranks), None, lora.use_rslora, lora.dropout, list(lora.target_modules))
            peft_model.add_adapter("ancestors", frozen.to_peft(inference_mode=True))
            peft_model.base_model.set_adapter(["ancestors", "node"])
            for name, param in peft_model.named_parameters():
                if ".ancestors." in name:
                    param.data = torch.empty(param.shape, dtype=_dtype(cfg), device="meta")
        for name, param in peft_model.named_parameters():
            param.requires_grad = "lora_" in name and ".node." in name
        if checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (as modeling.load_base_model)
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.enable_input_require_grads()
        model.config.use_cache = False
        peft_model.train()
        ids = torch.ones(batch, source_len, dtype=torch.long)
        labels = torch.ones(batch, target_len, dtype=torch.long)
    tracker = PeakStorage()
    with tracker:
        peft_model(input_ids=ids, labels=labels).loss.backward()
    grads = lora.r * shapes(cfg.model.base, tuple(lora.target_modules)).lora_per_rank * 4
    return max(tracker.peak - grads, 0)


def node_memory(cfg: Config, frozen_ranks: list[int], batch: int | None = None, source_len: int = 400,
                target_len: int = 120, checkpointing: bool | None = None, activations: bool = True) -> dict[str, int]:
    """Bytes by part and their "total" for one node's step on a GPU (the CUDA context not included)."""
    parts = static_bytes(cfg, frozen_ranks)
    if activations:
        gc = cfg.model.gradient_checkpointing
        gc = (True if gc is None else gc) if checkpointing is None else checkpointing
        per_pass = BatchPlan.of(cfg.train, 1).per_pass
        parts["activations"] = activation_bytes(cfg, frozen_ranks, batch or per_pass, source_len, target_len, gc)
    parts["total"] = sum(parts.values())
    return parts
