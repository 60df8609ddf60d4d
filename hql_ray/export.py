"""Exports people ship from a run: each language's final adapter (or full model) under final/<code>/."""

from __future__ import annotations

from pathlib import Path

from hql_ray import handoff
from hql_ray.config import Config
from hql_ray.records import AdapterState


def base_model_reference(cfg: Config) -> str:
    """What an exported adapter's config names as its base (the tiny model: its local folder)."""
    if cfg.model.base != "tiny":
        return cfg.model.base
    from hql_ray import modeling  # torch: only to build the tiny model

    return modeling.base_model_path(cfg)


def export_full_model(cfg: Config, state: AdapterState, out_dir: Path) -> None:
    """fft leaves: a whole model folder (save_pretrained) instead of an adapter."""
    import torch

    from hql_ray import modeling

    model = modeling.load_base_model(base_model_reference(cfg), "fft", torch.device("cpu"))
    handoff.load_full_state(model, state)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    modeling.load_tokenizer(cfg.model.base).save_pretrained(str(out_dir))


def export_adapter(chain: list[AdapterState], out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """Write ONE standard PEFT adapter dir (= handoff.concat_adapters(chain)) for ``PeftModel.from_pretrained``.

    Used for every mode with adapters. For merge mode this is the exact sum of the chain, without
    the original's 4-bit re-quantization rounding, so it can differ slightly from the in-run model.
    """
    state = handoff.concat_adapters(chain)
    config = handoff.frozen_shape(state).to_peft(base_model_name_or_path=base_model_name_or_path,
                                                 inference_mode=True)

    def write(tmp: Path) -> None:
        config.save_pretrained(str(tmp))
        handoff.save_tensors(state.tensors, tmp / "adapter_model.safetensors")

    return handoff.atomic_dir(out_dir, write)
