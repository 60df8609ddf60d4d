"""safetensors files written one tensor at a time.

`safetensors.torch.save_file` turns every tensor into a bytes copy before writing, so saving a
1.17 GB adapter (mT5-large, r=256) needs another 1.17 GB; the export of a rank-1024 stack needs
4.7 GB more. Here the header is computed from shapes first and each tensor is produced (or
concatenated) just before its bytes are written: memory holds one tensor at a time. The files are
standard safetensors (read by `safetensors.safe_open`, PEFT, transformers).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: str | Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      tensor_for: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `entries` ([(name, dtype, shape)], in this order) with each tensor from `tensor_for(name)`."""
    header: dict = {}
    offset = 0
    for name, dtype, shape in entries:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, dtype, shape in entries:
            tensor = tensor_for(name).detach().to("cpu").contiguous()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: expected {dtype} {tuple(shape)}, got {tensor.dtype} {tuple(tensor.shape)}")
            if tensor.numel():
                fh.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """`safetensors.torch.save_file` without its full copy of the bytes (sorted names, format "pt")."""
    names = sorted(tensors)
    write_safetensors(path, [(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names],
                      tensors.__getitem__, metadata={"format": "pt"})
