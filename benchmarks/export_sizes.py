"""Size on disk of a leaf's final/<code>/ per export mode, computed from shapes (nothing is downloaded).

    python benchmarks/export_sizes.py                 # a PTHQL leaf at mT5-large r=256: 4 nodes stacked
    python benchmarks/export_sizes.py --r 64 --nodes 3

The node adapter's tensors come from mT5-large's config on the meta device (`simulate.lora_shapes`), the
base's parameters from `flops.meta_model`. Adapter files are sized exactly as `tensorfile` writes them
(8-byte length, JSON header padded to 8, tensors); the merged model is its parameters in bf16 (shared
embedding once, untied head) plus its header, not counting the tokenizer's files (about 20 MB for mT5).
The memory column is the export's own peak (besides the page cache of the files it reads), estimated
from the same shapes: see the README's "Export modes".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASE = "google/mt5-large"


def safetensors_bytes(tensors: list[tuple[str, str, tuple[int, ...]]]) -> int:
    """Bytes of a safetensors file holding `tensors` [(name, dtype "F32"/"BF16", shape)], header included."""
    width = {"F32": 4, "BF16": 2}
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        size = width[dtype]
        for n in shape:
            size *= n
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + raw + (-raw % 8) + offset


def modules(r: int) -> dict[str, tuple[int, int]]:
    """{PEFT module prefix: (out_features, in_features)} of mT5-large's LoRA targets."""
    from hql_ray.settings.config import LoraShape
    from hql_ray.training.simulate import lora_shapes

    state = LoraShape(r=r).to_state()
    shapes = lora_shapes(BASE, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(state.items())))
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".lora_A.weight"):
            prefix = key[: -len(".lora_A.weight")]
            out[prefix] = (shapes[prefix + ".lora_B.weight"][0], shape[1])
    return out


def base_parameters() -> list[tuple[str, tuple[int, ...]]]:
    """mT5-large's parameters as saved (the shared embedding once)."""
    from hql_ray.training import flops

    model = flops.meta_model(flops.mt5_config())
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]  # named_parameters: tied once


def adapter_tensors(mods: dict[str, tuple[int, int]], rank: int, dtype: str) -> list:
    out = []
    for prefix in sorted(mods):
        o, i = mods[prefix]
        out += [(prefix + ".lora_A.weight", dtype, (rank, i)), (prefix + ".lora_B.weight", dtype, (o, rank))]
    return out


def table(r: int, nodes: int) -> list[tuple[str, str, int, int, str]]:
    """[(mode, what, rank, bytes on disk, peak memory estimate)] for a leaf whose chain has `nodes` nodes of rank r."""
    mods = modules(r)
    rank = r * nodes
    params = base_parameters()
    n_base = sum(_numel(s) for _, s in params)
    largest = max(o * i for o, i in mods.values())
    widest = max(o + i for o, i in mods.values())
    one_module = 4 * rank * widest  # the chain's factors of one module, fp32
    fp32_base = 4 * n_base
    logits = 3 * 8 * 4 * 16 * 250112  # the compact error's probe logits (fp64: exact, compact, difference)
    merged = safetensors_bytes([(n, "BF16", s) for n, s in params])
    return [
        ("adapter", "the exact chain, fp32", rank, safetensors_bytes(adapter_tensors(mods, rank, "F32")),
         f"{_gb(3 * one_module)} (one module: read, concatenated, written)"),
        ("adapter-bf16", "the exact chain, bf16", rank, safetensors_bytes(adapter_tensors(mods, rank, "BF16")),
         f"{_gb(3.5 * one_module)} (the same + its bf16 copy)"),
        ("merged", "whole model, bf16 (+ tokenizer)", 0, merged,
         f"{_gb(max(fp32_base + 8 * largest, 2 * n_base + 1e9))} (the fp32 base + one module's delta in fp64; "
         "then bf16 + one 1 GB shard while saved)"),
        ("compact", f"re-projected to rank {r}, fp32", r, safetensors_bytes(adapter_tensors(mods, r, "F32")),
         f"{_gb(fp32_base + logits + 8 * largest)} (the logit error: fp32 base + probe logits; the SVDs: "
         f"{_gb(8 * (3 * rank * widest + 2 * rank * rank))})"),
    ]


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


MEASURE = """
import json, sys, time
from pathlib import Path
import torch, transformers, peft
from hql_ray import export_modes
from hql_ray.settings.config import Config
def hwm():  # this process's peak RSS (VmHWM starts afresh at exec; ru_maxrss would start at the parent's)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
before = hwm()
mode, r, base, out, *chain = sys.argv[1:]
cfg = Config()
cfg.model.base, cfg.model.mode, cfg.model.lora.r, cfg.export.mode = "tiny", "lora", int(r), mode  # tiny: its tokenizer
start = time.time()
info = export_modes.export_language(cfg, [Path(c) for c in chain], Path(out), base)
peak = hwm()
print(json.dumps({**info, "seconds": time.time() - start, "rss_after_imports": before, "peak_rss": peak}))
"""


def measure(layers: int, r: int, nodes: int) -> None:
    """Each mode's export in a fresh process on mT5-large's widths and vocabulary with `layers` layers a
    side (random weights, written to a temp folder): its peak RSS (VmHWM) against the fp32 base's bytes."""
    import subprocess
    import tempfile

    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    from hql_ray.training import flops
    from hql_ray.settings.config import LoraShape
    from hql_ray.training.adapter_files import save_adapter_state
    from hql_ray.settings.records import AdapterState
    from hql_ray.training.simulate import lora_shapes

    with tempfile.TemporaryDirectory(prefix="export-sizes-") as tmp:
        root = Path(tmp)
        # MT5Config as transformers 5.24 loads google/mt5-large: embeddings and head tied (it forces that)
        model = MT5ForConditionalGeneration(MT5Config(**{**flops.MT5_LARGE, "num_layers": layers,
                                                         "num_decoder_layers": layers}))
        n_base = sum(p.numel() for p in model.parameters())  # tied parameters once
        model.save_pretrained(str(root / "base"))
        del model
        state = LoraShape(r=r).to_state()
        shapes = lora_shapes(str(root / "base"), tuple((k, tuple(v) if isinstance(v, list) else v)
                                                       for k, v in sorted(state.items())))
        chain = []
        for i in range(nodes):
            g = torch.Generator().manual_seed(i)
            tensors = {k: torch.randn(s, generator=g) * (0.02 if ".lora_A." in k else 0.001) for k, s in shapes.items()}
            chain.append(str(save_adapter_state(AdapterState(state, tensors), root / f"n{i}")))
            del tensors
        print(f"mT5-large widths, {layers}+{layers} layers: {n_base / 1e6:.0f}M parameters "
              f"(fp32 {4 * n_base / 1e9:.2f} GB); a chain of {nodes} x r={r}\n")
        print("| export.mode | on disk | wall | peak RSS | peak RSS - RSS after imports | logit error (max abs / rel) |")
        print("|---|---|---|---|---|---|")
        for mode in ("adapter", "adapter-bf16", "merged", "compact"):
            out = subprocess.run([sys.executable, "-c", MEASURE, mode, str(r), str(root / "base"), str(root / mode),
                                  *chain], capture_output=True, text=True, cwd=ROOT, check=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            err = (f"{m['logit_max_abs_error']:.3g} / {m['logit_rel_error']:.3g}" if mode == "compact" else "-")
            print(f"| `{mode}` | {m['bytes'] / 1e9:.2f} GB | {m['seconds']:.0f} s | {m['peak_rss'] / 1e9:.2f} GB "
                  f"| {(m['peak_rss'] - m['rss_after_imports']) / 1e9:.2f} GB | {err} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=256, help="each node's LoRA rank (model.lora.r)")
    parser.add_argument("--nodes", type=int, default=4, help="nodes in the leaf's chain (stack hand-off)")
    parser.add_argument("--measure", type=int, metavar="LAYERS", default=0,
                        help="also run each mode on mT5-large's widths with LAYERS layers a side (random weights) "
                             "and print its peak RSS")
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.measure, args.r, args.nodes)
        return
    rows = table(args.r, args.nodes)
    exact = rows[0][3]
    print(f"A leaf of {BASE}, a stacked chain of {args.nodes} nodes at r={args.r} (rank {args.r * args.nodes}):\n")
    print("| export.mode | final/<code>/ holds | rank | on disk | vs adapter | export's peak memory (estimate) |")
    print("|---|---|---|---|---|---|")
    for mode, what, rank, size, memory in rows:
        print(f"| `{mode}` | {what} | {rank or '-'} | {size / 1e9:.2f} GB | {size / exact:.2f} | {memory} |")


if __name__ == "__main__":
    main()
