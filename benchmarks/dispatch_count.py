"""PyTorch dispatcher calls per training step on the tiny model: transformers' Adafactor vs ours.

On a GPU the node's step is launch-bound (benchmarks/README.md, issue 12): every dispatcher call
costs ~10-20 us of CPU whether its kernel is big or tiny. This counts the calls (every aten op that
reaches the dispatcher, views included, under a `TorchDispatchMode`) in each phase of the node's
training step - forward, backward, gradient clipping, optimizer step, zero_grad - with the two
optimizers side by side in one process, on the demo's tiny QLoRA model (4-bit, LoRA r=16 on
q,k,v,o,wi_0,wi_1,wo), and prints their ratio. Counts are deterministic: no timing here.

    .venv/bin/python benchmarks/dispatch_count.py [--steps 3] [--r 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class DispatchCounter(TorchDispatchMode):
    """Counts the aten ops that reach the dispatcher while active (`with DispatchCounter() as c:`)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def make_optimizer(kind: str, params, lr: float):
    """kind: "hf" (transformers.optimization.Adafactor) or "foreach" (hql_ray.training.adafactor.Adafactor)."""
    if kind == "hf":
        from transformers.optimization import Adafactor
    else:
        from hql_ray.training.adafactor import Adafactor
    return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=0.0)


def tiny_model(cache: Path, r: int):
    """The demo's tiny mT5 in 4-bit with a fresh node adapter, as hql_ray.training.node.build_model makes it."""
    from hql_ray.training import handoff, modeling
    from hql_ray.settings.config import LoraShape

    path = modeling.resolve_base_model("tiny", cache)
    model = modeling.load_base_model(path, "qlora", torch.device("cpu"))
    lora = LoraShape(r=r, alpha=r)
    model = handoff.attach_node_adapter(model, lora, "stack", [])
    model.train()
    return model


def tiny_batch(seed: int, batch_size: int = 8, vocab: int = 384) -> dict:
    from hql_ray.data.batching import collate

    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch_size):
        n, m = int(torch.randint(20, 60, (1,), generator=g)), int(torch.randint(8, 30, (1,), generator=g))
        rows.append({"input_ids": torch.randint(3, vocab, (n,), generator=g).tolist() + [1],
                     "labels": torch.randint(3, vocab, (m,), generator=g).tolist() + [1]})
    return collate(rows, 0)


def count_step(model, params, optimizer, batch) -> dict[str, int]:
    """One node training step (node.train_node's order), counted phase by phase."""
    counts = {}
    with DispatchCounter() as c:
        loss = model(**batch).loss
    counts["forward"] = c.total
    with DispatchCounter() as c:
        loss.backward()
    counts["backward"] = c.total
    with DispatchCounter() as c:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    counts["clip"] = c.total
    with DispatchCounter() as c:
        optimizer.step()
    counts["optimizer"] = c.total
    with DispatchCounter() as c:
        optimizer.zero_grad(set_to_none=True)
    counts["zero_grad"] = c.total
    counts["step"] = sum(counts.values())
    return counts


def measure(kind: str, cache: Path, steps: int, r: int) -> dict[str, int]:
    """Counts of the last of `steps` steps (the first one also allocates the optimizer state)."""
    torch.manual_seed(0)
    model = tiny_model(cache, r)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(kind, params, lr=3e-3)
    for i in range(steps):
        counts = count_step(model, params, optimizer, tiny_batch(i))
    counts["tensors"] = len(params)
    return counts


def optimizer_calls_at_mt5_large(r: int = 256) -> dict[str, int]:
    """Optimizer-step calls for mT5-large's real LoRA shapes (864 tensors at r=256), on meta tensors:
    the dispatcher sees the same ops as on a GPU, and nothing is allocated."""
    from hql_ray.training import flops

    model = flops.meta_model(flops.mt5_config())
    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in flops.LORA_TARGETS:
            shapes += [(r, module.in_features), (module.out_features, r)]  # LoRA A, B
    counts = {"tensors": len(shapes)}
    for kind in ("hf", "foreach"):
        params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in shapes]
        optimizer = make_optimizer(kind, params, lr=5e-5)
        for _ in range(2):  # the second step is the steady state
            for p in params:
                p.grad = torch.empty_like(p)
            with DispatchCounter() as c:
                optimizer.step()
        counts[kind] = c.total
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per optimizer; the last one is counted")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (the demo's 16)")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hql-dispatch-") as tmp:
        old = measure("hf", Path(tmp), args.steps, args.r)
        new = measure("foreach", Path(tmp), args.steps, args.r)
    print(f"dispatcher calls per training step, tiny QLoRA model, LoRA r={args.r} "
          f"({old['tensors']} trainable tensors), step {args.steps} of {args.steps}; torch {torch.__version__}")
    print(f"{'phase':<10} {'transformers':>12} {'hql_ray':>8} {'ratio':>7}")
    for phase in ("forward", "backward", "clip", "optimizer", "zero_grad", "step"):
        ratio = old[phase] / new[phase] if new[phase] else float("inf")
        print(f"{phase:<10} {old[phase]:>12,} {new[phase]:>8,} {ratio:>6.1f}x")
    large = optimizer_calls_at_mt5_large()
    print(f"optimizer step at mT5-large shapes, LoRA r=256 ({large['tensors']} tensors, meta device): "
          f"transformers {large['hf']:,}, hql_ray {large['foreach']:,} ({large['hf'] / large['foreach']:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
