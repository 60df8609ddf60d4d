"""How the export modes write final/<code>/ (`ExportKit`); which mode a run uses and what each means for
the model card and for loading is `hql_ray.settings.exports` (`export_language` joins the two).

- adapter: the exact chain of node adapters as ONE PEFT adapter of rank sum(r_i), fp32 (`export.export_saved_chain`).
- adapter-bf16: the same adapter with its tensors stored in bf16 (half the bytes; PEFT loads it).
- merged: a whole model (bf16 weights, plus the tokenizer) that ``AutoModelForSeq2SeqLM.from_pretrained``
  loads without PEFT: the base in full precision with every target module's chain delta
  sum_i s_i B_i A_i added to its weight (the 4-bit base a qlora run trained over is not what is merged into).
- compact: the chain re-projected to rank model.lora.r per module by truncated SVD (QR of the stacked B
  and of the stacked A^T, SVD of the small core; the best rank-r approximation of each module's delta),
  a PEFT adapter of rank r with scaling 1, and its measured logit error against the exact export.

Memory stays bounded at mT5-large: the chain is read one module at a time (`export.SavedChain`); merged
and the compact error hold the base model once in fp32 (4.9 GB for mT5-large) plus one module's factors.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from hql_ray.outputs import export
from hql_ray.training import modeling, tensorfile
from hql_ray.settings.config import Config
from hql_ray.settings.exports import exporter_for
from hql_ray.settings.records import ExportInfo
from hql_ray.training.adapter_files import atomic_dir, load_adapter_state

PROBE_SHAPE = (4, 32, 16)  # the compact error's fixed batch: 4 sequences, 32 source / 16 target tokens
PROBE_SEED = 0


def export_language(cfg: Config, chain_dirs: list[Path], out_dir: Path, base_ref: str) -> ExportInfo:
    """Write final/<code>/ (``out_dir``) from the saved node adapters ``chain_dirs`` (root first) in the run's
    export mode (`exporter_for`). ``base_ref``: what the base is loaded from (`export.base_model_reference`)."""
    info = exporter_for(cfg).write(ExportKit(cfg, base_ref), chain_dirs, out_dir)
    return dataclasses.replace(info, bytes=dir_bytes(out_dir))


class ExportKit:
    """The writers the export modes use (`hql_ray.settings.exports`)."""

    def __init__(self, cfg: Config, base_ref: str):
        self.cfg, self.base_ref = cfg, base_ref

    def adapter(self, chain_dirs: list[Path], out_dir: Path, dtype: str | None = None) -> None:
        export.export_saved_chain(chain_dirs, out_dir, self.base_ref, dtype=getattr(torch, dtype) if dtype else None)

    def merged(self, chain_dirs: list[Path], out_dir: Path) -> None:
        export_merged(chain_dirs, out_dir, self.base_ref, self.cfg.model.base)

    def compact(self, chain_dirs: list[Path], out_dir: Path) -> dict:
        return export_compact(chain_dirs, out_dir, self.base_ref, self.cfg.model.lora.r)

    def full(self, state_dir: Path, out_dir: Path) -> None:
        export.export_full_model(self.cfg, load_adapter_state(state_dir), out_dir)


def dir_bytes(path: Path) -> int:
    """Bytes on disk of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- merged
def _weight(model, prefix: str):
    """The weight of the module a PEFT key prefix (``base_model.model.<module>``) names."""
    name = prefix.removeprefix("base_model.model.")
    return model.get_submodule(name).weight


def add_chain(model, chain: export.SavedChain, compact=None) -> None:
    """W += sum_i s_i B_i A_i for every module of the chain, in place, one module at a time. With
    ``compact`` (an open safetensors file of a scaling-1 adapter), W += B'A' - (the chain's delta):
    a model holding the chain's deltas becomes the model holding the compact adapter's."""
    with torch.no_grad():
        for prefix in chain.prefixes:
            a, b = chain.module(prefix)
            delta = b.double() @ a.double()
            if compact is not None:
                delta = (compact.get_tensor(prefix + ".lora_B.weight").double()
                         @ compact.get_tensor(prefix + ".lora_A.weight").double()) - delta
            weight = _weight(model, prefix)
            if weight.shape != delta.shape:
                raise ValueError(f"{prefix}: the adapter's delta is {tuple(delta.shape)}, "
                                 f"the base's weight {tuple(weight.shape)}")
            weight += delta.to(weight.dtype)
            del a, b, delta


def _full_precision_base(base_ref: str):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(base_ref, dtype=torch.float32).eval()


def export_merged(chain_dirs: list[Path], out_dir: Path, base_ref: str, tokenizer_ref: str) -> Path:
    """The base (fp32) + the chain's deltas, saved in bf16 with the tokenizer of ``tokenizer_ref``."""
    model = _full_precision_base(base_ref)
    with export.SavedChain(chain_dirs) as chain:
        add_chain(model, chain)
    model.to(torch.bfloat16)  # parameter by parameter: the fp32 copy goes as the bf16 one comes

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), max_shard_size="1GB")  # each shard's bytes copied once while saved
        modeling.load_tokenizer(tokenizer_ref).save_pretrained(str(tmp))

    return atomic_dir(out_dir, write)


# ----------------------------------------------------------------------------- compact
def compact_module(a, b, rank: int):
    """The best rank-``rank`` approximation of B @ A (a: [R x in], b: [out x R]) as factors (A', B') with
    B' A' ~ B A: QR of B and of A^T, SVD of the R x R core, the singular values split evenly (sqrt on
    each side). Fewer singular values than ``rank`` (a small module): zero rows / columns pad it. Computed
    in the factors' precision (fp32 for saved adapters: the result is stored in fp32 anyway)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    qb, rb = torch.linalg.qr(b.to(dtype))
    qa, ra = torch.linalg.qr(a.to(dtype).T)
    u, sv, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    k = min(rank, sv.numel())
    root = torch.sqrt(sv[:k])
    a2 = torch.zeros(rank, a.shape[1], dtype=dtype)
    b2 = torch.zeros(b.shape[0], rank, dtype=dtype)
    a2[:k] = root[:, None] * (vh[:k] @ qa.T)
    b2[:, :k] = (qb @ u[:, :k]) * root
    return a2.to(a.dtype), b2.to(b.dtype)


def export_compact(chain_dirs: list[Path], out_dir: Path, base_ref: str, rank: int) -> dict:
    """The chain as a PEFT adapter of rank min(rank, the chain's rank), scaling 1 (r = lora_alpha, no
    rsLoRA); returns its rank and its logit error against the exact export (`logit_error`)."""
    result: dict = {}

    def write(tmp: Path) -> None:
        with export.SavedChain(chain_dirs) as chain:
            k = min(rank, chain.rank)
            entries = []
            for prefix in chain.prefixes:
                out, inp = chain.shape(prefix)
                entries += [(prefix + ".lora_A.weight", chain.dtype(prefix), (k, inp)),
                            (prefix + ".lora_B.weight", chain.dtype(prefix), (out, k))]
            current: dict = {}

            def tensor_for(name: str):
                prefix, kind = name.rsplit(".lora_", 1)
                if prefix not in current:  # A then B of one module: one SVD, one module held
                    current.clear()
                    current[prefix] = compact_module(*chain.module(prefix), k)
                return current[prefix][0 if kind.startswith("A") else 1]

            config = {"r": k, "lora_alpha": k, "use_rslora": False, "lora_dropout": 0.0,
                      "target_modules": chain.targets}
            export.peft_config(config, base_ref).save_pretrained(str(tmp))
            tensorfile.write_safetensors(tmp / "adapter_model.safetensors", entries, tensor_for,
                                         metadata={"format": "pt"})
            current.clear()
            result.update(rank=k, **logit_error(chain, tmp / "adapter_model.safetensors", base_ref))

    atomic_dir(out_dir, write)
    return result


def probe_inputs(vocab_size: int):
    """The fixed batch the compact error is measured on: seeded random token ids (PROBE_SHAPE)."""
    n, src, tgt = PROBE_SHAPE
    gen = torch.Generator().manual_seed(PROBE_SEED)
    high = min(vocab_size, 32000)
    return (torch.randint(2, high, (n, src), generator=gen), torch.randint(2, high, (n, tgt), generator=gen))


def logit_error(chain: export.SavedChain, compact_file: Path, base_ref: str) -> dict:
    """Logits of the base (fp32) with the exact chain's deltas vs with the compact adapter's, on
    `probe_inputs`: the max absolute difference and the relative error ||L_c - L_e||_F / ||L_e||_F.
    One model in memory: the compact one is the exact one plus (B'A' - the chain's delta) per module."""
    from safetensors import safe_open

    model = _full_precision_base(base_ref)
    ids, dec = probe_inputs(model.config.vocab_size)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids, decoder_input_ids=dec).logits.double()

    add_chain(model, chain)
    exact = logits()
    with safe_open(str(compact_file), framework="pt") as compact:
        add_chain(model, chain, compact=compact)
    diff = logits() - exact
    del model
    rel = (diff.norm() / exact.norm()).item() if exact.norm() > 0 else math.inf
    return {"logit_max_abs_error": diff.abs().max().item(), "logit_rel_error": rel}
