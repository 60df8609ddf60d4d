"""The model side of the hand-off: a node's PEFT model put together from the base and its ancestors' adapters.

The rule of each mode (stack, merge, continue; fft's whole model) is a class in
`hql_ray.settings.handoffs`; it composes the primitives of `AdapterKit` below, which hold the PEFT and
torch code. `attach_node_adapter` is the one entry point: the node model's only trainable parameters
are its adapter "node"; in stack mode the frozen ancestors live in one adapter "ancestors".
"""

from __future__ import annotations

import warnings

import torch

from hql_ray.settings.config import LoraShape
from hql_ray.settings.handoffs import FULL, HANDOFFS, HandOff
from hql_ray.settings.records import AdapterState
from hql_ray.training.adapter_algebra import AdapterLoadError, concat_adapters, frozen_shape, reproject
from hql_ray.training.modeling import is_4bit, make_4bit_cpu_exact

NODE = "node"
ANCESTORS = "ancestors"


def load_into(model, state: AdapterState, adapter_name: str) -> None:
    """Load ``state`` into adapter ``adapter_name`` and insist that every tensor landed."""
    from peft import set_peft_model_state_dict

    expected = {k for k, _ in model.named_parameters() if f".{adapter_name}." in k and "lora_" in k}
    try:
        result = set_peft_model_state_dict(model, state.tensors, adapter_name=adapter_name)
    except RuntimeError as exc:  # size mismatch: another rank or another model
        raise AdapterLoadError(f"adapter {adapter_name!r} does not fit the model: {exc}") from exc
    missing = sorted(k for k in result.missing_keys if k in expected)
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise AdapterLoadError(
            f"adapter {adapter_name!r} loaded partially: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def merge_chain(model, chain: list[AdapterState]):
    """The original's hand-off: merge each ancestor into the base in turn (4-bit: re-quantizes)."""
    from peft import get_peft_model

    for i, state in enumerate(chain):
        name = f"ancestor{i}"
        peft_model = get_peft_model(model, frozen_shape(state).to_peft(), adapter_name=name)
        load_into(peft_model, state, name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Merge lora module to 4-bit linear")
            model = peft_model.merge_and_unload()
        make_4bit_cpu_exact(model)  # keep the fresh 4-bit weights on the exact CPU path
    return model


def base_compute_dtype(model) -> torch.dtype:
    """The dtype the base computes in: bnb's compute dtype for a 4-bit base, else its parameters' dtype."""
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None) if quant is not None else None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return dtype or next(p.dtype for p in model.parameters() if p.is_floating_point())


def hold_frozen_in(peft_model, dtype: torch.dtype) -> int:
    """Cast the frozen "ancestors" adapter to ``dtype``; returns the number of tensors cast.

    Why: at a PTHQL leaf the ancestors are rank 768 at mT5-large r=256, 3.5 GB in fp32 on the GPU; in
    the base's bf16 compute dtype they take half, and PEFT casts each LoRA input to the adapter's dtype
    anyway. The exported adapter stays the exact fp32 chain: the difference to the model as trained
    is the rounding of the ancestors' factors to ``dtype`` (tests/test_handoff_dtype.py measures it)."""
    n = 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if f".{ANCESTORS}." in name and param.dtype != dtype:
                param.data = param.data.to(dtype)
                n += 1
    return n


class AdapterKit:
    """The primitives a hand-off mode's `attach` composes (`hql_ray.settings.handoffs`)."""

    def __init__(self, frozen_dtype: torch.dtype | None = None):
        self.frozen_dtype = frozen_dtype

    def fresh(self, model, lora: LoraShape):
        """`model` wrapped as a PEFT model with a fresh adapter "node" of shape `lora`."""
        from peft import get_peft_model

        return get_peft_model(model, lora.to_peft(), adapter_name=NODE)

    def concat(self, chain: list[AdapterState]) -> AdapterState:
        return concat_adapters(chain)

    def freeze_beside(self, peft_model, ancestors: AdapterState) -> None:
        """`ancestors` as a frozen adapter active beside "node", held in the base's compute dtype (or
        frozen_dtype). Do NOT call ``model.set_adapter("node")`` afterwards: it would deactivate them."""
        peft_model.add_adapter(ANCESTORS, frozen_shape(ancestors).to_peft(inference_mode=True))
        load_into(peft_model, ancestors, ANCESTORS)
        hold_frozen_in(peft_model, self.frozen_dtype or base_compute_dtype(peft_model.base_model.model))
        peft_model.base_model.set_adapter([ANCESTORS, NODE])

    def merged_into_base(self, model, chain: list[AdapterState]):
        return merge_chain(model, chain) if chain else model

    def fitted(self, parent: AdapterState, lora: LoraShape) -> AdapterState:
        """The parent's adapter in the node's LoRA shape (re-projected when r, alpha or rsLoRA differ)."""
        target = lora.to_state()
        if sorted(parent.config["target_modules"]) != target["target_modules"]:
            raise AdapterLoadError(f"parent adapter targets {parent.config['target_modules']}, "
                                   f"this node targets {target['target_modules']}")
        if any(parent.config[k] != target[k] for k in ("r", "lora_alpha", "use_rslora")):
            return reproject(parent, lora.r, lora_alpha=lora.lora_alpha, use_rslora=lora.use_rslora)
        return parent

    def load_node(self, peft_model, state: AdapterState) -> None:
        load_into(peft_model, state, NODE)

    def load_full(self, model, state: AdapterState) -> None:
        load_full_state(model, state)


def attach_node_adapter(model, lora: LoraShape, mode: HandOff | str, parent_chain: list[AdapterState],
                        frozen_dtype: torch.dtype | None = None):
    """The node's model from the bare base ``model`` and its ancestors' adapters as ``mode`` hands them on
    (a `HandOff`, or its name in `HANDOFFS`). Only "node" is trainable (fft: the whole model). Frozen
    ancestors (stack) are held in ``frozen_dtype`` (None = the base's compute dtype: bf16 on GPUs)."""
    from peft import PeftModel

    mode = HANDOFFS[mode] if isinstance(mode, str) else mode
    if isinstance(model, PeftModel):
        raise ValueError("attach_node_adapter expects a bare base model, not a PeftModel")
    chain = list(parent_chain or [])
    if len(mode.handed_on(chain)) != len(chain):
        raise ValueError(f"the {mode.name} hand-off starts from {len(mode.handed_on(chain))} adapter(s), "
                         f"got a chain of {len(chain)}")
    out = mode.attach(AdapterKit(frozen_dtype), model, lora, chain)
    if mode is not FULL:
        for name, param in out.named_parameters():
            param.requires_grad = "lora_" in name and f".{NODE}." in name
    return out


def node_adapter_state(model) -> AdapterState:
    """The trainable "node" adapter as an AdapterState (detached CPU clones, PEFT key format)."""
    from peft import get_peft_model_state_dict

    model = getattr(model, "module", model)  # DDP wrapper
    params = {k: v for k, v in model.named_parameters() if f".{NODE}." in k and "lora_" in k}
    tensors = get_peft_model_state_dict(model, state_dict=params, adapter_name=NODE)
    cfg = model.peft_config[NODE]
    shape = LoraShape(cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.lora_dropout, list(cfg.target_modules))
    return AdapterState(shape.to_state(), {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()})


# ---- fft: the whole model ------------------------------------------------------------------------
def full_state(model) -> AdapterState:
    """All weights of a fully fine-tuned model (fft has no adapters) as an AdapterState-shaped dict.

    Tied tensors (mT5's shared / encoder / decoder embeddings) are stored once and listed under
    config["aliases"]. Exporting an fft leaf is ``model.save_pretrained(dir)`` of the whole model.
    """
    if is_4bit(model):
        raise ValueError("full_state is for fft models; a 4-bit model hands off adapters")
    tensors, aliases, seen = {}, {}, {}
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), value.dtype, tuple(value.shape))
        if value.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return AdapterState({"kind": "full", "aliases": aliases}, tensors)


def load_full_state(model, state: AdapterState) -> None:
    """Load a ``full_state`` into ``model`` strictly (every key, no extras)."""
    tensors = dict(state.tensors)
    for alias, source in state.config.get("aliases", {}).items():
        tensors[alias] = tensors[source]
    model.load_state_dict(tensors, strict=True)
