"""Exports people ship from a run: each language's final adapter (or full model) under final/<code>/."""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path

from hql_ray.training import tensorfile
from hql_ray.training import modeling
from hql_ray.training.adapter_algebra import concat_config, concat_module
from hql_ray.training.adapter_files import STATE_FILE, TENSOR_FILE, atomic_dir
from hql_ray.training.handoff import load_full_state
from hql_ray.settings.config import TINY_BASES, Config, LoraShape
from hql_ray.settings.records import AdapterState


def base_model_reference(cfg: Config) -> str:
    """What an exported adapter's config names as its base (the tiny model: its local folder)."""
    if cfg.model.base not in TINY_BASES:
        return cfg.model.base
    return modeling.base_model_path(cfg)


def export_full_model(cfg: Config, state: AdapterState, out_dir: Path) -> None:
    """fft leaves: a whole model folder (save_pretrained) instead of an adapter."""
    import torch

    model = modeling.load_base_model(base_model_reference(cfg), "fft", torch.device("cpu"))
    load_full_state(model, state)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    modeling.load_tokenizer(cfg.model.base).save_pretrained(str(out_dir))


def peft_config(config: dict, base_model_name_or_path: str):
    return dataclasses.replace(LoraShape.from_state(config), dropout=0.0).to_peft(
        base_model_name_or_path=base_model_name_or_path, inference_mode=True)


class SavedChain:
    """The node adapters saved under nodes/<id>/adapter (root first), opened lazily: `module(prefix)` reads
    and concatenates one module's factors, so no more than one module of the chain is ever in memory.
    Use it as a context manager (it holds the safetensors files open)."""

    def __init__(self, chain_dirs: list[Path]):
        from safetensors import safe_open

        self.dirs = [Path(d) for d in chain_dirs]
        if not self.dirs:
            raise ValueError("an export needs at least one node adapter")
        self.configs = [json.loads((d / STATE_FILE).read_text())["config"] for d in self.dirs]
        self.targets = sorted(self.configs[0]["target_modules"])
        if any(sorted(c["target_modules"]) != self.targets for c in self.configs[1:]):
            raise ValueError(f"adapters in {', '.join(map(str, self.dirs))} target different modules")
        self.scalings = [LoraShape.from_state(c).scaling for c in self.configs]
        self.rank = sum(c["r"] for c in self.configs)
        self._stack = ExitStack()
        self.files = [self._stack.enter_context(safe_open(str(d / TENSOR_FILE), framework="pt"))
                      for d in self.dirs]
        keys = sorted(self.files[0].keys())
        if any(sorted(f.keys()) != keys for f in self.files[1:]):
            raise ValueError(f"adapters in {', '.join(map(str, self.dirs))} cover different modules")
        self.prefixes = [k[: -len(".lora_A.weight")] for k in keys if k.endswith(".lora_A.weight")]

    def __enter__(self) -> "SavedChain":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def dtype(self, prefix: str):
        """The concatenation's dtype: fp32, or fp64 where the chain was saved in fp64."""
        import torch

        wide = self.files[0].get_slice(prefix + ".lora_A.weight").get_dtype() == "F64"
        return torch.float64 if wide else torch.float32

    def shape(self, prefix: str) -> tuple[int, int]:
        """(out_features, in_features) of the module."""
        a = self.files[0].get_slice(prefix + ".lora_A.weight").get_shape()
        b = self.files[0].get_slice(prefix + ".lora_B.weight").get_shape()
        return b[0], a[1]

    def module(self, prefix: str):
        """(A [R x in] stacked, B [out x R] with each node's scaling folded in): delta = B @ A."""
        return concat_module([f.get_tensor(prefix + ".lora_A.weight") for f in self.files],
                                     [f.get_tensor(prefix + ".lora_B.weight") for f in self.files], self.scalings)


def export_saved_chain(chain_dirs: list[Path], out_dir: str | Path, base_model_name_or_path: str,
                       dtype=None) -> Path:
    """`export_adapter` of the node adapters saved under nodes/<id>/adapter, read and concatenated one
    module at a time: the driver never holds a chain (4.7 GB for a PTHQL leaf at mT5-large r=256).
    `dtype` (e.g. torch.bfloat16): the tensors are stored in it (export mode adapter-bf16)."""

    def write(tmp: Path) -> None:
        with SavedChain(chain_dirs) as chain:
            entries = []
            for prefix in chain.prefixes:
                out, inp = chain.shape(prefix)
                kind = dtype or chain.dtype(prefix)
                entries += [(prefix + ".lora_A.weight", kind, (chain.rank, inp)),
                            (prefix + ".lora_B.weight", kind, (out, chain.rank))]
            current: dict = {}

            def tensor_for(name: str):
                prefix, kind = name.rsplit(".lora_", 1)
                if prefix not in current:  # A then B of the same module: concatenate once, keep one module
                    current.clear()
                    current[prefix] = chain.module(prefix)
                a, b = current[prefix]
                tensor = a if kind.startswith("A") else b
                return tensor if dtype is None else tensor.to(dtype)

            peft_config(concat_config(chain.configs), base_model_name_or_path).save_pretrained(str(tmp))
            tensorfile.write_safetensors(tmp / "adapter_model.safetensors", entries, tensor_for,
                                         metadata={"format": "pt"})

    return atomic_dir(out_dir, write)
