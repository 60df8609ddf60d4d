"""Exports people ship from a run: each language's final adapter (or full model) under final/<code>/."""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path

from hql_ray import handoff, tensorfile
from hql_ray.config import TINY_BASES, Config, LoraShape
from hql_ray.records import AdapterState


def base_model_reference(cfg: Config) -> str:
    """What an exported adapter's config names as its base (the tiny model: its local folder)."""
    if cfg.model.base not in TINY_BASES:
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


def _peft_config(config: dict, base_model_name_or_path: str):
    return dataclasses.replace(LoraShape.from_state(config), dropout=0.0).to_peft(
        base_model_name_or_path=base_model_name_or_path, inference_mode=True)


def export_saved_chain(chain_dirs: list[Path], out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """`export_adapter` of the node adapters saved under nodes/<id>/adapter, read and concatenated one
    module at a time: the driver never holds a chain (4.7 GB for a PTHQL leaf at mT5-large r=256)."""
    import torch
    from safetensors import safe_open

    configs = [json.loads((Path(d) / handoff.STATE_FILE).read_text())["config"] for d in chain_dirs]
    targets = sorted(configs[0]["target_modules"])
    if any(sorted(c["target_modules"]) != targets for c in configs[1:]):
        raise ValueError(f"adapters in {', '.join(map(str, chain_dirs))} target different modules")
    scalings = [LoraShape.from_state(c).scaling for c in configs]
    merged = handoff.concat_config(configs)

    def write(tmp: Path) -> None:
        with ExitStack() as stack:
            files = [stack.enter_context(safe_open(str(Path(d) / handoff.TENSOR_FILE), framework="pt"))
                     for d in chain_dirs]
            keys = sorted(files[0].keys())
            if any(sorted(f.keys()) != keys for f in files[1:]):
                raise ValueError(f"adapters in {', '.join(map(str, chain_dirs))} cover different modules")
            prefixes = [k[: -len(".lora_A.weight")] for k in keys if k.endswith(".lora_A.weight")]
            entries = []
            for prefix in prefixes:
                a_shapes = [f.get_slice(prefix + ".lora_A.weight").get_shape() for f in files]
                b_shapes = [f.get_slice(prefix + ".lora_B.weight").get_shape() for f in files]
                dtype = torch.float64 if files[0].get_slice(prefix + ".lora_A.weight").get_dtype() == "F64" \
                    else torch.float32
                rank = sum(s[0] for s in a_shapes)
                entries += [(prefix + ".lora_A.weight", dtype, (rank, a_shapes[0][1])),
                            (prefix + ".lora_B.weight", dtype, (b_shapes[0][0], rank))]
            current: dict = {}

            def tensor_for(name: str):
                prefix, kind = name.rsplit(".lora_", 1)
                if prefix not in current:  # A then B of the same module: concatenate once, keep one module
                    current.clear()
                    current[prefix] = handoff.concat_module(
                        [f.get_tensor(prefix + ".lora_A.weight") for f in files],
                        [f.get_tensor(prefix + ".lora_B.weight") for f in files], scalings)
                a, b = current[prefix]
                return a if kind.startswith("A") else b

            _peft_config(merged, base_model_name_or_path).save_pretrained(str(tmp))
            tensorfile.write_safetensors(tmp / "adapter_model.safetensors", entries, tensor_for,
                                         metadata={"format": "pt"})

    return handoff.atomic_dir(out_dir, write)
