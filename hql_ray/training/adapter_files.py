"""Adapters on disk and on the wire: saved atomically with their checksum (safetensors + JSON, no pickles),
checked when read, and turned into numpy for Ray's object store and back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from hql_ray.settings.errors import InputError
from hql_ray.settings.records import AdapterState
from hql_ray.training import tensorfile

STATE_FILE, TENSOR_FILE = "state.json", "adapter.safetensors"


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


def to_wire(state: AdapterState) -> AdapterState:
    """Ray Train refuses torch tensors in return values: ship numpy (zero-copy in the object store)."""
    tensors, dtypes = {}, {}
    for key, t in state.tensors.items():
        dtypes[key] = str(t.dtype).replace("torch.", "")
        t = t.detach().cpu()
        tensors[key] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return AdapterState(state.config, tensors, dtypes)


def from_wire(wire: AdapterState, copy: bool = True) -> AdapterState:
    """Torch tensors again. The object store hands out read-only arrays: copied, unless `copy=False`
    for a caller that only reads them (a checksum, a save: no second 1.17 GB)."""
    tensors = {}
    for key, array in wire.tensors.items():
        if copy or array.flags.writeable:
            t = torch.from_numpy(array.copy() if copy else array)
        else:
            with warnings.catch_warnings():  # "non-writable array": read only, never written
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(array)
        tensors[key] = t.to(getattr(torch, wire.dtypes[key])) if key in wire.dtypes else t
    return AdapterState(wire.config, tensors)
