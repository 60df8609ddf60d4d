"""Dropout drawn per example, so that a node's result does not depend on how many workers it runs on.

torch's dropout draws one mask for the whole batch from the process's RNG: a batch split over 1, 2 or 4
workers (or grown from 2 to 4 at a checkpoint) draws other masks for the same example, and the node ends
with another adapter. Here every kept/dropped decision is a hash of (the node's seed, the optimizer step,
the example's row in the node's data, the dropout site, the element's coordinates), compared with p: the
same example at the same step gets the same mask on any worker, in any micro-batch, whatever the padding.

- `install(model)` replaces every `nn.Dropout` of the model (T5's, PEFT's lora_dropout) with an
  `ExampleDropout` and routes attention through `attention`, which applies the same per-example dropout to
  the attention probabilities (and runs transformers' SDPA unchanged when there is no dropout: eval,
  generation). Sites are named by their module path, so every process numbers them alike.
- `tag(batch, seed, step, rows)` adds the micro-batch's example keys (`example_keys`) to a collated batch;
  `use(model, batch)` hands them to the model's dropout sites and returns the batch without them, just
  before the forward pass. They stay current until the next `use`, so gradient checkpointing's recompute
  during the backward draws the same masks.

The hash is a 32-bit integer mix (xor-shift / multiply, constants from Wellons' hash prospector) computed
with int64 tensor ops on the model's device: vectorised, no Python loop per example, no host sync, no
global RNG; products stay below 2**63 so every device computes the same bits. A train-mode forward without
keys (code that never calls `use`) falls back to torch's dropout.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

KEYS = "example_keys"  # the batch entry `tag` adds and `use` takes out
ATTENTION = "hql_example_dropout"  # our attention implementation's name in transformers' registry
_M32 = 0xFFFFFFFF
_MUL1, _MUL2 = 0x21F0AAAD, 0x735A2D97  # odd, < 2**31: x * c < 2**63 for x < 2**32
_WEYL = 0x1E3779B9  # odd (the golden ratio's 0x9E3779B9 less its top bit): spreads consecutive coordinates


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit hash of each value of an int64 tensor holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 15)


def example_keys(seed: int, step: int, rows) -> torch.Tensor:
    """One 32-bit key per example of a micro-batch: a hash of (node seed, optimizer step, data row)."""
    base = mix32(torch.tensor([seed & _M32], dtype=torch.int64))
    base = mix32(base ^ (step & _M32))
    return mix32(base ^ (torch.as_tensor(list(rows), dtype=torch.int64) & _M32))


def keep_mask(keys: torch.Tensor, site: int, shape: torch.Size, p: float) -> torch.Tensor:
    """Bool mask of `shape` (batch first; keys: one per row of the batch), True = kept with probability 1 - p.

    Each element's draw depends on its example's key, the site and its coordinates (not on the tensor's
    padded sizes): the hash is folded over the leading dimensions with full mixes on the small broadcast
    shapes; the last dimension, the only full-size step, gets one multiply / xor-shift round of the already
    mixed prefix and a Weyl sequence of its coordinate (half the ops of a full mix)."""
    h = mix32(keys.reshape(-1, *[1] * (len(shape) - 1)) ^ site)
    if len(shape) == 1:  # one value per example: no coordinate
        return h >= int(round(p * 2**32))
    for dim, size in enumerate(shape[1:-1], start=1):
        view = [1] * len(shape)
        view[dim] = size
        h = mix32(h ^ torch.arange(size, device=keys.device, dtype=torch.int64).view(view))
    last = (torch.arange(shape[-1], device=keys.device, dtype=torch.int64) * _WEYL) & _M32
    x = ((h ^ last) * _MUL2) & _M32
    return (x ^ (x >> 16)) >= int(round(p * 2**32))


class DropoutState:
    """The current micro-batch's example keys, shared by a model's dropout sites (set by `use`)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None


class ExampleDropout(nn.Module):
    """nn.Dropout with masks drawn per example from the shared `DropoutState`'s keys."""

    def __init__(self, p: float, site: int, state: DropoutState):
        super().__init__()
        self.p, self.site, self.state = float(p), site, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p, self.site, self.state, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site:#010x}"


def drop(x: torch.Tensor, p: float, site: int, state: DropoutState, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keys = state.keys
    if keys is None:
        return nn.functional.dropout(x, p, True)
    if keys.shape[0] != x.shape[0]:
        raise RuntimeError(f"dropout keys for {keys.shape[0]} examples but a batch of {x.shape[0]}: "
                           f"call dropout.use(model, batch) before each training forward")
    keep = keep_mask(keys.to(x.device), site, x.shape, p)
    return torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=x.device))


def site_id(name: str) -> int:
    return zlib.crc32(name.encode())


def install(model: nn.Module) -> nn.Module:
    """Per-example dropout in `model` (in place): every nn.Dropout replaced, attention routed through
    `attention`. Returns the model; its `DropoutState` is `model.example_dropout`."""
    state = DropoutState()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout):
                path = f"{name}.{child_name}" if name else child_name
                setattr(module, child_name, ExampleDropout(child.p, site_id(path), state))
    _route_attention(model, state)
    model.example_dropout = state
    return model


def use(model: nn.Module, batch: dict) -> dict:
    """Hand the batch's example keys (from `tag`) to the model's dropout sites; the batch without them."""
    state = getattr(model, "example_dropout", None)
    if state is not None:
        state.keys = batch.get(KEYS)
    return {k: v for k, v in batch.items() if k != KEYS}


def tag(batch: dict, seed: int, step: int, rows) -> dict:
    """A collated micro-batch with its example keys (rows: the examples' rows in the node's data)."""
    return {**batch, KEYS: example_keys(seed, step, rows)}


# ---- attention --------------------------------------------------------------------------------------
def _route_attention(model: nn.Module, state: DropoutState) -> None:
    """Tag the attention modules and switch the model's attention implementation to `attention`
    (registered once in transformers' registries, with SDPA's masks)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "set_attn_implementation"):
        return
    _register()
    for name, module in base.named_modules():
        if isinstance(getattr(module, "dropout", None), float):  # T5-style attention: its rate as a float
            module.example_dropout_site = (site_id(f"{name}.attention"), state)
    base.set_attn_implementation(ATTENTION)


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
              position_bias=None, **kwargs):
    """transformers' SDPA attention, except in training with dropout: then the probabilities are made
    explicitly (as the eager implementation does) and dropped per example."""
    from transformers.integrations.sdpa_attention import create_position_bias_mask, sdpa_attention_forward

    tagged = getattr(module, "example_dropout_site", None)
    if dropout == 0.0 or tagged is None or tagged[1].keys is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    site, state = tagged
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    bias = position_bias if position_bias is not None else query.new_zeros(())
    mask = create_position_bias_mask(bias, attention_mask, causal, query, key)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    probs = nn.functional.softmax((scores + mask).float(), dim=-1).to(query.dtype)
    probs = drop(probs, dropout, site, state, True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs
