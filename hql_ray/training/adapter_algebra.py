"""LoRA adapters as algebra: a chain's summed deltas as one adapter (`concat_adapters`), a delta at another
rank (`reproject`), dense deltas for checks. Pure torch on `AdapterState`s; no model, no PEFT.

An `AdapterState` holds the factors in PEFT's saved-key format (``base_model.model.<module>.lora_A.weight``)
and its LoRA shape as PEFT names it (`LoraShape.to_state`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from hql_ray.settings.config import LoraShape
from hql_ray.settings.records import AdapterState


class AdapterLoadError(ValueError):
    """An adapter state did not fit the model completely (missing, extra or mis-shaped tensors)."""


def scaling(config: dict) -> float:
    """PEFT's scaling of an adapter state's LoRA shape."""
    return LoraShape.from_state(config).scaling


def frozen_shape(state: AdapterState) -> LoraShape:
    """The LoRA shape of an adapter state loaded to be used, not trained (no dropout)."""
    return dataclasses.replace(LoraShape.from_state(state.config), dropout=0.0)


def modules_of(state: AdapterState) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module prefix: (A [r x in], B [out x r])}; raises if a module lacks one of the two."""
    tensors, out = state.tensors, {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            prefix = key[: -len(".lora_A.weight")]
            b = tensors.get(prefix + ".lora_B.weight")
            if b is None:
                raise AdapterLoadError(f"adapter state has {key} but no lora_B for it")
            out[prefix] = (tensors[key], b)
        elif not key.endswith(".lora_B.weight"):
            raise AdapterLoadError(f"adapter state holds a non-LoRA tensor {key!r}")
    if 2 * len(out) != len(tensors):
        raise AdapterLoadError("adapter state has lora_B tensors without lora_A")
    return out


def state_of(cfg: dict, mods: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> AdapterState:
    tensors = {}
    for prefix in sorted(mods):
        a, b = mods[prefix]
        tensors[prefix + ".lora_A.weight"] = a.contiguous()
        tensors[prefix + ".lora_B.weight"] = b.contiguous()
    return AdapterState(cfg, tensors)


# ----------------------------------------------------------------------------- algebra
def concat_adapters(chain: list[AdapterState]) -> AdapterState:
    """The sum of the chain's LoRA deltas as ONE LoRA of rank sum(r_i), exactly.

    sum_i s_i B_i A_i = [s_1 B_1 ... s_n B_n] @ [A_1; ...; A_n]: A stacked, B side by side with
    each adapter's scaling folded into its block; the result has r = lora_alpha = R, no rsLoRA,
    so PEFT's scaling is 1. Ranks may differ; target modules must match.
    """
    if not chain:
        raise ValueError("concat_adapters needs at least one adapter")
    targets = sorted(chain[0].config["target_modules"])
    for state in chain[1:]:
        if sorted(state.config["target_modules"]) != targets:
            raise ValueError(f"adapters target different modules: {targets} vs "
                             f"{sorted(state.config['target_modules'])}")
    per = [modules_of(state) for state in chain]
    if any(set(p) != set(per[0]) for p in per[1:]):
        raise ValueError("adapters in the chain cover different modules")
    scalings = [scaling(state.config) for state in chain]
    mods = {prefix: concat_module([p[prefix][0] for p in per], [p[prefix][1] for p in per], scalings)
            for prefix in per[0]}
    return state_of(concat_config([state.config for state in chain]), mods)


def concat_module(a_parts: list[torch.Tensor], b_parts: list[torch.Tensor], scalings: list[float]):
    """One module of `concat_adapters`: (A stacked, B side by side with each scaling folded in), fp32 or wider."""
    dtype = torch.promote_types(a_parts[0].dtype, torch.float32)
    a = torch.cat([a.to(dtype) for a in a_parts], dim=0)
    b = torch.cat([b.to(dtype) * s for b, s in zip(b_parts, scalings)], dim=1)
    return a, b


def concat_config(configs: list[dict]) -> dict:
    """The LoRA config of `concat_adapters`'s result: r = alpha = the ranks' sum, no rsLoRA (scaling 1)."""
    total = sum(c["r"] for c in configs)
    return {"r": total, "lora_alpha": total, "use_rslora": False, "lora_dropout": 0.0,
            "target_modules": sorted(configs[0]["target_modules"])}


def delta_weights(state: AdapterState) -> dict[str, torch.Tensor]:
    """Dense per-module deltas scale * B @ A (for checks and debugging; large for big models)."""
    s = scaling(state.config)
    return {p: s * (b.double() @ a.double()) for p, (a, b) in modules_of(state).items()}


def reproject(state: AdapterState, new_r: int, *, lora_alpha: float | None = None,
              use_rslora: bool | None = None, seed: int = 0) -> AdapterState:
    """The same delta as an adapter of rank ``new_r`` under the target scaling convention.

    The result's config is r=new_r with ``lora_alpha``/``use_rslora`` of the target settings (the
    source's when not given), and the factors are rescaled so that s' B' A' reproduces s B A:
    - growing (new_r >= r): exact. B gets zero columns and A gets fresh rows drawn like PEFT's
      init (kaiming-uniform, seeded): zero rows in both would leave the new ranks with zero
      gradient forever. The extra ranks start exactly like a fresh LoRA.
    - shrinking: the best rank-new_r approximation (Eckart-Young) via QR of the factors and an
      SVD of the small core, split evenly: B' = U sqrt(S/s'), A' = sqrt(S/s') V^T.
    """
    if new_r < 1:
        raise ValueError(f"rank must be >= 1, got {new_r}")
    cfg = dict(state.config)
    s_old = scaling(cfg)
    cfg.update(r=new_r, lora_alpha=cfg["lora_alpha"] if lora_alpha is None else lora_alpha,
               use_rslora=cfg["use_rslora"] if use_rslora is None else use_rslora)
    s_new = scaling(cfg)
    gen = torch.Generator().manual_seed(seed)
    mods = {}
    for prefix, (a, b) in sorted(modules_of(state).items()):
        dtype, r = a.dtype, a.shape[0]
        if new_r >= r:
            a2, b2 = a.double(), b.double() * (s_old / s_new)
        else:
            qb, rb = torch.linalg.qr(b.double())
            qa, ra = torch.linalg.qr(a.double().T)
            u, sv, vh = torch.linalg.svd(s_old * rb @ ra.T)
            k = min(new_r, sv.numel())
            root = torch.sqrt(sv[:k] / s_new)
            b2 = (qb @ u[:, :k]) * root
            a2 = root[:, None] * (vh[:k] @ qa.T)
        pad = new_r - a2.shape[0]
        if pad > 0:  # fresh rows for A (PEFT init), zero columns for B: delta unchanged
            bound = 1.0 / math.sqrt(a.shape[1])
            fresh = (torch.rand(pad, a.shape[1], generator=gen, dtype=torch.float64) * 2 - 1) * bound
            a2 = torch.cat([a2, fresh], dim=0)
            b2 = torch.cat([b2, b2.new_zeros(b2.shape[0], pad)], dim=1)
        mods[prefix] = (a2.to(dtype), b2.to(dtype))
    return state_of(cfg, mods)
