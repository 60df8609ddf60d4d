"""GPU memory per tree depth of a node's training step at the real size, estimated on a CPU (issue 11).

    .venv/bin/python benchmarks/gpu_memory.py                      # mT5-large, r=256, batch 8 of 400/120 tokens
    .venv/bin/python benchmarks/gpu_memory.py --source-len 512 --target-len 256 --depths 0 3

For each depth of a PTHQL path (root: no ancestors; level 1: one rank-256 ancestor; level 2: two; leaf:
three, rank 768 in `stack`) prints `hql_ray.training.memory`'s estimate: the static part counted from shapes (4-bit
base, frozen ancestors, trainable LoRA + gradients, Adafactor) and the activations' peak measured by
running the step on the meta device, with gradient checkpointing on (the default on GPUs) and off, and
with the ancestors held in fp32 (before) and in the compute dtype bf16 (now). No GPU, no download.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hql_ray.training import memory
from hql_ray.settings.config import Config  # noqa: E402

GIB = 2**30
NAMES = {0: "root", 1: "level 1", 2: "level 2", 3: "leaf"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="google/mt5-large")
    p.add_argument("--r", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--source-len", type=int, default=400, help="padded input tokens of the batch")
    p.add_argument("--target-len", type=int, default=120, help="padded target tokens of the batch")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 1, 2, 3])
    args = p.parse_args()
    cfg = Config()
    cfg.model.base, cfg.model.lora.r = args.base, args.r
    print(f"{args.base}, LoRA r={args.r} on {','.join(cfg.model.lora.target_modules)}, {cfg.model.mode} "
          f"({cfg.model.quant_type}, double quant {cfg.model.double_quant}), compute bf16, batch {args.batch} "
          f"padded to {args.source_len}/{args.target_len} tokens; GiB; CUDA context not included", flush=True)
    print("| depth | ancestors' rank | base | frozen ancestors bf16 (fp32) | LoRA + grads + Adafactor | "
          "activations, checkpointing on | **total, on** | total, on, fp32 ancestors | activations, off | total, off |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for depth in args.depths:
        ranks = [args.r] * depth
        started = time.time()
        static = memory.static_bytes(cfg, ranks)
        on = memory.activation_bytes(cfg, ranks, args.batch, args.source_len, args.target_len, checkpointing=True)
        off = memory.activation_bytes(cfg, ranks, args.batch, args.source_len, args.target_len, checkpointing=False)
        trained = static["lora"] + static["lora_grads"] + static["optimizer"]
        fixed = static["base"] + static["frozen_ancestors"] + trained
        fp32_extra = static["frozen_ancestors"]  # fp32 is twice bf16
        print(f"| {NAMES.get(depth, depth)} | {sum(ranks)} | {static['base'] / GIB:.2f} | "
              f"{static['frozen_ancestors'] / GIB:.2f} ({2 * static['frozen_ancestors'] / GIB:.2f}) | "
              f"{trained / GIB:.2f} | {on / GIB:.2f} | **{(fixed + on) / GIB:.2f}** | "
              f"{(fixed + fp32_extra + on) / GIB:.2f} | {off / GIB:.2f} | {(fixed + off) / GIB:.2f} |", flush=True)
        print(f"  ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
