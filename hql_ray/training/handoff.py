"""Parent -> child hand-off of LoRA adapters (stack / merge / continue), rank re-projection, persistence.

Adapters move as `records.AdapterState` (its LoRA shape as PEFT names it, plus the factors in PEFT's
saved-key format ``base_model.model.<module>.lora_A.weight``, so they load with
``set_peft_model_state_dict``).

Inside a node model the node's own adapter is always named ``"node"`` and is the only trainable
thing; in stack mode the frozen ancestors live in one adapter ``"ancestors"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from hql_ray.training import tensorfile
from hql_ray.settings.config import HANDOFFS
from hql_ray.settings.errors import InputError
from hql_ray.settings.config import LoraShape
from hql_ray.training.modeling import is_4bit, make_4bit_cpu_exact
from hql_ray.settings.records import AdapterState

NODE = "node"
ANCESTORS = "ancestors"
STATE_FILE, TENSOR_FILE = "state.json", "adapter.safetensors"


class AdapterLoadError(ValueError):
    """An adapter state did not fit the model completely (missing, extra or mis-shaped tensors)."""


# ----------------------------------------------------------------------------- config helpers
def _scaling(cfg: dict) -> float:
    return LoraShape.from_state(cfg).scaling


def frozen_shape(state: AdapterState) -> LoraShape:
    """The LoRA shape of an adapter state loaded to be used, not trained (no dropout)."""
    return dataclasses.replace(LoraShape.from_state(state.config), dropout=0.0)


def _modules(state: AdapterState) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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


def _state(cfg: dict, mods: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> AdapterState:
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
    per = [_modules(state) for state in chain]
    if any(set(p) != set(per[0]) for p in per[1:]):
        raise ValueError("adapters in the chain cover different modules")
    scalings = [_scaling(state.config) for state in chain]
    mods = {prefix: concat_module([p[prefix][0] for p in per], [p[prefix][1] for p in per], scalings)
            for prefix in per[0]}
    return _state(concat_config([state.config for state in chain]), mods)


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
    s = _scaling(state.config)
    return {p: s * (b.double() @ a.double()) for p, (a, b) in _modules(state).items()}


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
    s_old = _scaling(cfg)
    cfg.update(r=new_r, lora_alpha=cfg["lora_alpha"] if lora_alpha is None else lora_alpha,
               use_rslora=cfg["use_rslora"] if use_rslora is None else use_rslora)
    s_new = _scaling(cfg)
    gen = torch.Generator().manual_seed(seed)
    mods = {}
    for prefix, (a, b) in sorted(_modules(state).items()):
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
    return _state(cfg, mods)


# ----------------------------------------------------------------------------- model side
def _load_into(model, state: AdapterState, adapter_name: str) -> None:
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


def _merge_chain(model, chain: list[AdapterState]):
    """The original's hand-off: merge each ancestor into the base in turn (4-bit: re-quantizes)."""
    from peft import get_peft_model

    for i, state in enumerate(chain):
        name = f"ancestor{i}"
        peft_model = get_peft_model(model, frozen_shape(state).to_peft(), adapter_name=name)
        _load_into(peft_model, state, name)
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


def attach_node_adapter(model, lora: LoraShape, handoff: str, parent_chain: list[AdapterState],
                        frozen_dtype: torch.dtype | None = None):
    """Wrap the base ``model`` as a PeftModel whose only trainable parameters are adapter "node".

    - stack: frozen "ancestors" = concat_adapters(chain) plus a fresh "node", both active. Exact:
      the 4-bit base is never touched. The ancestors are held in ``frozen_dtype`` (None = the base's
      compute dtype, `base_compute_dtype`: bf16 on GPUs, fp32 on CPU). Do NOT call ``model.set_adapter("node")`` afterwards: it
      would deactivate the ancestors (use ``model.base_model.set_adapter([ANCESTORS, NODE])``).
    - merge: each ancestor merged into the base (4-bit: dequantize + re-quantize, lossy), fresh node.
    - continue: "node" starts as the parent's adapter (chain = [parent]); reprojected first when
      the parent's r / alpha / rsLoRA differ from ``lora``.
    An empty chain (a root) gives a fresh "node" in every mode.
    """
    from peft import PeftModel, get_peft_model

    if handoff not in HANDOFFS:
        raise ValueError(f"unknown hand-off {handoff!r}; valid: {', '.join(HANDOFFS)}")
    if isinstance(model, PeftModel):
        raise ValueError("attach_node_adapter expects a bare base model, not a PeftModel")
    chain = list(parent_chain or [])
    if handoff == "continue" and len(chain) > 1:
        raise ValueError(f"continue hand-off takes the parent's adapter only, got a chain of {len(chain)}")
    if chain and handoff == "merge":
        model = _merge_chain(model, chain)
    peft_model = get_peft_model(model, lora.to_peft(), adapter_name=NODE)
    if chain and handoff == "stack":
        ancestors = concat_adapters(chain)
        peft_model.add_adapter(ANCESTORS, frozen_shape(ancestors).to_peft(inference_mode=True))
        _load_into(peft_model, ancestors, ANCESTORS)
        hold_frozen_in(peft_model, frozen_dtype or base_compute_dtype(model))
        peft_model.base_model.set_adapter([ANCESTORS, NODE])
    elif chain and handoff == "continue":
        parent, target = chain[0], lora.to_state()
        if sorted(parent.config["target_modules"]) != target["target_modules"]:
            raise AdapterLoadError(f"parent adapter targets {parent.config['target_modules']}, "
                                   f"this node targets {target['target_modules']}")
        if any(parent.config[k] != target[k] for k in ("r", "lora_alpha", "use_rslora")):
            parent = reproject(parent, lora.r, lora_alpha=lora.lora_alpha, use_rslora=lora.use_rslora)
        _load_into(peft_model, parent, NODE)
    for name, param in peft_model.named_parameters():
        param.requires_grad = "lora_" in name and f".{NODE}." in name
    return peft_model


def node_adapter_state(model) -> AdapterState:
    """The trainable "node" adapter as an AdapterState (detached CPU clones, PEFT key format)."""
    from peft import get_peft_model_state_dict

    model = getattr(model, "module", model)  # DDP wrapper
    params = {k: v for k, v in model.named_parameters() if f".{NODE}." in k and "lora_" in k}
    tensors = get_peft_model_state_dict(model, state_dict=params, adapter_name=NODE)
    cfg = model.peft_config[NODE]
    shape = LoraShape(cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.lora_dropout, list(cfg.target_modules))
    return AdapterState(shape.to_state(), {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()})


def handed_on(chain: list, handoff: str, mode: str = "qlora") -> list:
    """The hand-off chain rule, the one place it lives: of a node's chain (its ancestors, root first,
    then itself; ids or adapter states alike), what a child starts from: all of it (stack, merge),
    or only the last (continue; and fft, whose state is the whole model)."""
    if handoff not in HANDOFFS:
        raise ValueError(f"unknown hand-off {handoff!r}; valid: {', '.join(HANDOFFS)}")
    return list(chain[-1:]) if handoff == "continue" or mode == "fft" else list(chain)


# ----------------------------------------------------------------------------- fft hand-off
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


# ----------------------------------------------------------------------------- files
def atomic_dir(out_dir: str | Path, write) -> Path:
    """Write a directory via a temp sibling + rename, so readers never see half of it."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = None
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def save_tensors(tensors: dict, path: Path) -> None:
    tensorfile.save_tensors(tensors, path)  # one tensor at a time: no second copy of the adapter


def state_checksum(state: AdapterState) -> str:
    """sha256 over the config (canonical JSON) and every tensor (sorted keys, dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(state.config, sort_keys=True).encode())
    for key in sorted(state.tensors):
        t = state.tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_adapter_state(state: AdapterState, out_dir: str | Path) -> Path:
    """Persist an AdapterState (safetensors + JSON with its checksum), atomically; no pickles."""
    meta = {"format": "hql-ray-adapter-state-v1", "config": state.config,
            "checksum": state_checksum(state)}

    def write(tmp: Path) -> None:
        save_tensors(state.tensors, tmp / TENSOR_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))

    return atomic_dir(out_dir, write)


def load_adapter_state(in_dir: str | Path) -> AdapterState:
    """Read what ``save_adapter_state`` wrote; InputError if files are missing or do not verify."""
    from safetensors.torch import load_file

    d = Path(in_dir)
    meta_path, tensor_path = d / STATE_FILE, d / TENSOR_FILE
    if not meta_path.exists() or not tensor_path.exists():
        raise InputError(f"not a saved adapter state (needs {STATE_FILE} and {TENSOR_FILE})", path=d)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"unreadable adapter state: {exc.msg}", path=meta_path, line=exc.lineno) from exc
    state = AdapterState(meta["config"], load_file(str(tensor_path)))
    if state_checksum(state) != meta.get("checksum"):
        raise InputError("adapter state does not match its checksum (damaged or edited)", path=d)
    return state
