"""Dispatcher calls per phase and host syncs of the node's OWN training step at mT5-large's structure, on CPU.

Issue 23's CPU proxies (counts, not timings; deterministic). On a GPU the node's step is launch-bound
(benchmarks/README.md): every dispatcher call costs ~10-20 us of CPU whatever its kernel, and every host sync
stops the CPU from running ahead of the GPU. Calls follow the module structure, not the widths, so a random mT5
with mT5-large's structure (24+24 layers, gated-gelu, dropout 0.1, LoRA on q,k,v,o,wi_0,wi_1,wo: 768 Linear4bit,
864 LoRA tensors) at tiny widths has mT5-large's counts. Everything goes through the node's own code:
`node.setup` (data from data/sample, the 4-bit base, the adapter), `node.plan_steps`, `node.batches_from_step`,
`node.train_step` and `node.when_due`, with gradient checkpointing on as on a GPU, one worker.

Variants (the same batches):
  original       train.host_sync step: the loss read every step, transformers builds the masks (its
                 padding_mask.all() reads them back): the node's step before issue 23
  sync-free      train.host_sync log (the default now)
  dequantized    + train.dequantized_base: no bitsandbytes dequantization per matmul
  compiled       + train.compile_blocks (inductor on CPU: its kernels are C++ instead of Triton; the calls into
                 the dispatcher that remain are of the same kind on a GPU: GEMMs, what is outside the blocks, the
                 optimizer)
  compiled-no-ckpt  the same without gradient checkpointing (what a GPU can afford at batch 8: the check's rung 8)
  compiled-4bit  sync-free + train.compile_blocks, the 4-bit base dequantized per matmul (not run by default)

Per variant: calls per phase of one step (forward, backward, clip, optimizer, zero_grad), the step's total
(counted around node.train_step), host syncs per step and per logging interval (log_every steps and the node's
when_due: the loss read for the progress line and the curve), and for compiled the generated kernels per step.

    python benchmarks/step_counts.py [--layers 24] [--variants original sync-free dequantized compiled] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.dispatch_count import DispatchCounter  # noqa: E402

PHASES = ("forward", "backward", "loss", "reduce", "clip", "optimizer", "zero_grad")
SYNC_OPS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.equal"}
BEFORE = 47_843  # the node's GPU step on main before issue 23 (perf review turn 3, phase_ops.py 24 foreach 1 0)
VARIANTS = {"original": {"train.host_sync": "step"},
            "sync-free": {"train.host_sync": "log"},
            "dequantized": {"train.host_sync": "log", "train.dequantized_base": True},
            "compiled": {"train.host_sync": "log", "train.dequantized_base": True, "train.compile_blocks": True},
            "compiled-no-ckpt": {"train.host_sync": "log", "train.dequantized_base": True,
                                 "train.compile_blocks": True, "model.gradient_checkpointing": False},
            "compiled-4bit": {"train.host_sync": "log", "train.compile_blocks": True}}
DEFAULT = ["original", "sync-free", "dequantized", "compiled", "compiled-no-ckpt"]
# Issue 23's changes are counted against its BEFORE, torch's dropout as then; --example-dropout counts issue 25's
# per-example dropout too (it doubles an eager step's calls: benchmarks/README.md step_counts).
EXAMPLE_DROPOUT = [False]


class SyncCounter(TorchDispatchMode):
    """Host syncs: values read back from tensors, as the dispatcher sees them, plus `Tensor.tolist` (which reads
    a whole tensor without the dispatcher on CPU; on a GPU it is a copy to the host and a sync)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += str(func.overloadpacket) in SYNC_OPS
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter, tolist = self, self._tolist

        def counted(tensor):
            counter.n += 1
            return tolist(tensor)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def model_dir(out: Path, layers: int) -> str:
    """A random mT5 with mT5-large's structure at tiny widths, and a byte tokenizer, saved under `out`."""
    from transformers import ByT5Tokenizer, MT5Config, MT5ForConditionalGeneration

    config = MT5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=layers, num_decoder_layers=layers,
                       num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.1, decoder_start_token_id=0,
                       pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    MT5ForConditionalGeneration(config).save_pretrained(out)
    ByT5Tokenizer().save_pretrained(out)
    return str(out)


def node_config(base: str, out: Path, overrides: dict):
    from hql_ray.settings.config import make_config

    values = {"run.output_dir": out, "data.dir": ROOT / "data" / "sample", "data.cache_dir": out / ".cache",
              "model.base": base, "model.mode": "qlora", "model.gradient_checkpointing": True, "model.lora.r": 16,
              "train.batch_size": 8, "train.log_every": 5, "train.eval_every": 10_000, "train.max_steps": 10_000,
              "train.epochs": 50, "train.compile_backend": "inductor", "eval.generate": False,
              "tracking.tensorboard": False, "train.example_dropout": EXAMPLE_DROPOUT[0], **overrides}
    return make_config(overrides=[f"{k}={v}" for k, v in values.items()]).with_absolute_paths()


def phase_counter(counts: Counter):
    @contextlib.contextmanager
    def phase(name: str):
        with DispatchCounter() as c:
            yield
        counts[name] += c.total
    return phase


def kernels_per_step(st, batches) -> int:
    """Inductor's generated kernels run in one step (profiler events of its kernel records)."""
    from torch.profiler import ProfilerActivity, profile

    from hql_ray.training import node

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        node.train_step(st, next(batches))
    return sum(1 for e in prof.events() if "cpp_fused" in e.name or "triton_" in e.name)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def count_variant(st, base: str, out: Path, name: str) -> dict:
    """One variant's counts through the node's own step: 2 warm-up steps (optimizer state, compiles), one
    counted step, then one whole logging interval counted for host syncs."""
    from hql_ray.training import modeling, node
    from hql_ray.training.step import StepLosses

    st.cfg = node_config(base, out, VARIANTS[name])
    modeling.set_gradient_checkpointing(st.model, bool(st.cfg.model.gradient_checkpointing))
    node.plan_steps(st)
    st.step = 0
    batches = node.batches_from_step(st)
    losses = StepLosses()
    meters = node.LossMeter(losses), node.LossMeter(losses)
    started, graphs_before = time.perf_counter(), graphs()
    for _ in range(2):
        losses.add(node.train_step(st, next(batches)))
    losses.floats()
    warm_s = time.perf_counter() - started
    phases: Counter = Counter()
    st.runner.phase = phase_counter(phases)
    batch = next(batches)  # collated outside: the count is the step's
    with DispatchCounter() as total, SyncCounter() as step_syncs:
        loss = node.train_step(st, batch)
    losses.add(loss)  # (the loop's bookkeeping: a detach and a view, not the step's)
    st.runner.phase = lambda name: contextlib.nullcontext()
    log_every = st.cfg.train.log_every
    while st.step % log_every:
        losses.add(node.train_step(st, next(batches)))
        node.when_due(st, *meters)
    interval = SyncCounter()
    for _ in range(log_every):
        batch = next(batches)
        with interval:
            losses.add(node.train_step(st, batch))
            node.when_due(st, *meters)
    row = {"variant": name, **{p: phases[p] for p in PHASES}, "step": total.total,
           "step_syncs": step_syncs.n, "interval_syncs": interval.n, "log_every": log_every,
           "graphs": graphs() - graphs_before, "warm_s": round(warm_s, 1),
           "compiled": bool(st.runner.compiled is not None and st.runner.compiled.enabled)}
    if st.cfg.train.compile_blocks:
        row["kernels"] = kernels_per_step(st, batches)
    return row


def measure(layers: int, variants: list[str]) -> list[dict]:
    """Builds the model once (node.setup) and counts each variant on it, the same batches each time."""
    from hql_ray.settings.records import NodeSpec
    from hql_ray.training import node
    from hql_ray.training.context import LocalContext

    import torch._inductor.config

    torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's kernels show in the profiler
    with tempfile.TemporaryDirectory(prefix="hql-step-counts-") as tmp:
        out = Path(tmp)
        base = model_dir(out / "model", layers)
        torch.manual_seed(0)
        st = node.setup(node_config(base, out, {}), NodeSpec("language.German", "German", "language", 0, None, True,
                                                            (("deu_Latn", "German"),)), [], LocalContext(device="cpu"))
        n4 = sum(1 for m in st.model.modules() if type(m).__name__ == "Linear4bit")
        rows = []
        for name in variants:
            rows.append(count_variant(st, base, out, name))
            print(f"  {name}: {rows[-1]}", file=sys.stderr, flush=True)  # progress: a compile takes minutes
    for row in rows:
        row.update(layers=layers, linear4bit=n4, lora_tensors=len(st.params))
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"dispatcher calls per training step, node's own step, mT5-large structure {rows[0]['layers']}+"
          f"{rows[0]['layers']} layers ({rows[0]['linear4bit']} Linear4bit, {rows[0]['lora_tensors']} LoRA tensors), "
          f"gradient checkpointing on, CPU; torch {torch.__version__}")
    header = ["variant", *PHASES, "step", f"vs {BEFORE:,}", "syncs/step", "syncs/interval", "graphs", "kernels"]
    print("  ".join(f"{h:>13}" for h in header))
    for r in rows:
        cells = [r["variant"], *(f"{r[p]:,}" for p in PHASES), f"{r['step']:,}", f"{BEFORE / r['step']:.1f}x",
                 str(r["step_syncs"]), f"{r['interval_syncs']} / {r['log_every']} steps", str(r["graphs"]),
                 str(r.get("kernels", "-"))]
        print("  ".join(f"{c:>13}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="encoder = decoder layers (24: mT5-large)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--example-dropout", action="store_true",
                        help="with train.example_dropout (the default of a run): per-example dropout masks")
    args = parser.parse_args(argv)
    EXAMPLE_DROPOUT[0] = args.example_dropout
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    rows = measure(args.layers, args.variants)
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
