"""The stages of benchmarks/gpu_check.py, each run in its own process: preflight, rungs, node (see there)."""

from __future__ import annotations

import gc
import importlib
import math
import os
import statistics
import threading
import time
import warnings
from pathlib import Path

from benchmarks import common
from benchmarks.gpu_check import ROOT, SPEC_TFLOPS, TINY, Rung, ladder, read_rows, write_row

MODULES = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "penman", "smatch",
           "sacrebleu", "safetensors", "tokenizers", "pyarrow"]


def quiet() -> None:
    common.quiet()  # stdlib only: fine on the bare GPU image
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def device_of(args):
    import torch

    if args.dry_run:
        torch.set_num_threads(1)  # a shared small machine: more threads only fight
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA GPU (on a CPU machine run it with --dry-run)")
    return torch.device("cuda")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- preflight ---------------------------------------------------------------------------------------------
def versions() -> dict:
    """Every package the node needs, imported (a missing one fails here, named), and the node's import chain."""
    found = {}
    for name in MODULES:
        found[name] = getattr(importlib.import_module(name), "__version__", "?")
    importlib.import_module("hql_ray.training.node")
    return found


def matmul_peak(device, n: int, reps: int = 10) -> float:
    """bf16 matrix product TFLOP/s on random data (the ceiling MFU is also given against)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def copy_bandwidth(device, nbytes: int, reps: int = 10) -> float:
    """Device-to-device copy GB/s, bytes read plus bytes written."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - t0) / 1e9


def save_model(model_dir: Path, device, dry: bool) -> float:
    """A random mT5-large (tiny widths on a dry run) with an untied head and ByT5's byte tokenizer, saved once."""
    import torch
    from transformers import ByT5Tokenizer, MT5ForConditionalGeneration

    from hql_ray.training import flops

    if (model_dir / "config.json").exists():
        return 0.0
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = MT5ForConditionalGeneration(flops.mt5_config(**(TINY if dry else {})))
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared  # as the checkpoint
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    model.save_pretrained(tmp)
    ByT5Tokenizer().save_pretrained(tmp)
    tmp.rename(model_dir)
    del model
    gc.collect()
    return time.perf_counter() - t0


def preflight(args) -> None:
    quiet()
    import torch

    from hql_ray.training import modeling

    found = versions()
    device = device_of(args)
    ok, why = modeling.bitsandbytes_available(device)
    if not ok:
        raise SystemExit(f"gpu_check preflight: {why}")
    name = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    row = {"kind": "preflight", "device": name, "versions": found, "cuda": torch.version.cuda,
           "peak_tflops": matmul_peak(device, 256 if args.dry_run else 8192),
           "copy_gbs": copy_bandwidth(device, 2**23 if args.dry_run else 2**30)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        row.update(memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count)
        torch.cuda.empty_cache()
    row["model_save_s"] = save_model(args.model_dir, device, args.dry_run)
    print(f"[preflight] {name}: bf16 matmul {row['peak_tflops']:.1f} TFLOP/s, copy {row['copy_gbs']:.0f} GB/s; "
          + ", ".join(f"{k} {v}" for k, v in found.items()) + f"; model saved in {row['model_save_s']:.0f} s",
          flush=True)
    write_row(args.out / "gpu_check.jsonl", row)


# ---- the node's config and spec ------------------------------------------------------------------------------
def check_config(args, settings: dict):
    """The node's config for a rung: data/sample, the saved random model, LoRA r=256 (8 on a dry run)."""
    from hql_ray.settings.config import Config

    values = {"run.output_dir": str(args.work / "runs"), "run.name": "gpu-check",
              "data.dir": str(ROOT / "data" / "sample"), "data.cache_dir": str(args.work / "cache"),
              "data.validation_size": 48, "tree.file": str(ROOT / "language_files" / "12langs_pthql.csv"),
              "model.base": str(args.model_dir), "model.mode": "qlora", "model.lora.r": 8 if args.dry_run else 256,
              "train.batch_size": 8, "train.epochs": 1000, "train.max_steps": args.warmup + args.steps + 2,
              "train.eval_every": 10**6, "train.log_every": 10,
              "train.compile_backend": "aot_eager" if args.dry_run else "inductor",
              "eval.generate": False, "tracking.tensorboard": False, **settings}
    nested: dict = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        if "." in name:  # model.lora.r
            sub, name = name.split(".")
            nested.setdefault(section, {}).setdefault(sub, {})[name] = value
        else:
            nested.setdefault(section, {})[name] = value
    return Config.from_dict(nested).validate()


def node_spec(cfg, dry: bool):
    """The root node of the sample's 12 languages (2 on a dry run)."""
    from hql_ray.settings.records import NodeSpec
    from hql_ray.settings.tree import load_tree

    languages = [[lang.code, lang.name] for lang in load_tree(cfg.tree.file, ["language"]).languages]
    languages = languages[:2] if dry else languages
    return NodeSpec("gpu-check", "gpu-check", "", 0, None, False, tuple(tuple(pair) for pair in languages))


# ---- one rung --------------------------------------------------------------------------------------------------
class Watchdog:
    """At the rung's limit: its row says so, and the process ends (the supervisor starts the rungs left)."""

    def __init__(self, rows: Path, name: str, limit: float):
        self.timer = threading.Timer(limit, self.fire, args=(rows, name, limit))
        self.timer.daemon = True

    def fire(self, rows: Path, name: str, limit: float) -> None:
        write_row(rows, {"kind": "rung", "rung": name, "error": f"stopped at its {limit:.0f} s limit"})
        print(f"[rungs] {name}: stopped at its {limit:.0f} s limit", flush=True)
        os._exit(124)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


class StepClock:
    """Marks at each step's start: CUDA events on a GPU (the time between two marks on the GPU's own timeline),
    the host clock on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        pairs = zip(self.marks, self.marks[1:])
        return [a.elapsed_time(b) if self.cuda else (b - a) * 1e3 for a, b in pairs]


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def syncs_in_one_step(st, batches, device) -> int:
    """Host syncs of one node step: CUDA's sync debug mode on a GPU (every blocking call, the batch's copies
    included), the dispatcher's reads on CPU (benchmarks/step_counts.py)."""
    import torch

    from hql_ray.training import node

    if device.type != "cuda":
        from benchmarks.step_counts import SyncCounter

        batch = next(batches)  # (collating reads the host's own tensors: not a device sync)
        with SyncCounter() as counter:
            node.train_step(st, batch)
        return counter.n
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:  # the batch's copy to the GPU too: blocking in the original step
            node.train_step(st, next(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def start_rung(st, cfg, initial, seed: int = 1234):
    """The loaded node on a rung's config: the same initial LoRA, RNG and batches as every rung."""
    import torch

    from hql_ray.training import modeling, node

    st.cfg = cfg
    if cfg.train.cuda_graphs and st.ctx.device.type == "cuda":  # another compile mode: its own graphs, not
        # counted against dynamo's recompile limit
        import torch._dynamo

        torch._dynamo.reset()
    modeling.set_gradient_checkpointing(st.model, bool(cfg.model.gradient_checkpointing))
    node.restore(st.params, initial)
    torch.manual_seed(seed)
    node.plan_steps(st)
    st.step = 0
    return node.batches_from_step(st)


def timed_steps(st, batches, losses, n: int, device) -> dict:
    """n node steps, timed between step starts; the rows and real tokens each trained."""
    from hql_ray.training import node

    clock, rows, real = StepClock(device), [], 0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        batch = next(batches)
        clock.mark()
        losses.add(node.train_step(st, batch))
        rows.append(batch.rows)
        real += batch.real_tokens
    clock.mark()
    values = losses.floats()[-n:]
    sync(device)
    return {"wall": time.perf_counter() - t0, "ms": clock.intervals_ms(), "rows": rows, "real": real,
            "losses": values}


def run_rung(st, rung: Rung, args, shared: dict) -> dict:
    """Warm-up (compiles inside), timed steps, one step's host syncs; the row."""
    import torch

    from hql_ray.training import flops, node
    from hql_ray.training.step import StepLosses

    device, cfg = shared["device"], check_config(args, rung.settings)
    batches = start_rung(st, cfg, shared["initial"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, g0, t0 = StepLosses(), graphs(), time.perf_counter()
    for _ in range(args.warmup):
        losses.add(node.train_step(st, next(batches)))
    losses.floats()
    sync(device)
    warm_s, g1 = time.perf_counter() - t0, graphs()
    timed = timed_steps(st, batches, losses, args.steps, device)
    recompiles = graphs() - g1
    syncs = syncs_in_one_step(st, batches, device)
    src, tgt = shared["sizes"]
    model_flops = sum(flops.step_flops(shared["counts"], [src[i] for i in r], [tgt[i] for i in r])
                      for r in timed["rows"])
    tflops = model_flops / timed["wall"] / 1e12
    median = statistics.median(timed["ms"])
    return {"kind": "rung", "rung": rung.name, "settings": rung.settings, "batch_tokens": cfg.train.batch_tokens,
            "median_ms": median, "p90_ms": sorted(timed["ms"])[math.ceil(0.9 * len(timed["ms"])) - 1],
            "tokens_per_s": timed["real"] / timed["wall"], "tflops": tflops, "mfu": tflops / SPEC_TFLOPS,
            "mfu_measured": tflops / shared["peak"], "peak_gib": memory_gib(device),
            "examples_per_step": statistics.fmean(len(r) for r in timed["rows"]),
            "losses": timed["losses"], "compile_s": max(0.0, warm_s - args.warmup * median / 1e3),
            "graphs": g1 - g0, "recompiles": recompiles, "syncs": syncs,
            "compiled": bool(st.runner.compiled and st.runner.compiled.enabled),
            "note": "compile failed: eager" if cfg.train.compile_blocks and not st.runner.compiled.enabled else ""}


def memory_gib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def loss_diff(row: dict, done: list[dict]) -> float:
    """Largest relative difference of the per-step losses from the first rung trained on the same batches."""
    same = [r for r in done if r.get("losses") and r["batch_tokens"] == row["batch_tokens"]]
    if not same:
        return 0.0
    ref = same[0]["losses"]
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(row["losses"], ref))


def rung_stage(args) -> None:
    """node.setup once, then the asked rungs in ladder order, each under its Watchdog, rows as they finish."""
    quiet()
    import torch

    from hql_ray.data import dataset as ds_lib
    from hql_ray.training import flops, node
    from hql_ray.training.context import LocalContext

    rows_path = args.out / "gpu_check.jsonl"
    rungs = [r for r in ladder(args.dry_run) if r.name.split()[0] in args.rungs]
    device = device_of(args)
    t0 = time.perf_counter()
    cfg = check_config(args, rungs[0].settings)
    torch.manual_seed(0)
    st = node.setup(cfg, node_spec(cfg, args.dry_run), [], LocalContext(device=device))
    pre = next((r for r in read_rows(rows_path) if r.get("kind") == "preflight"), {})
    shared = {"device": device, "initial": node.snapshot(st.params), "sizes": ds_lib.example_sizes(st.train_data),
              "counts": flops.count(flops.meta_model(flops.mt5_config(**(TINY if args.dry_run else {}))),
                                    cfg.model.lora.r),
              "peak": pre.get("peak_tflops") or SPEC_TFLOPS}
    src, tgt = shared["sizes"]
    print(f"[rungs] node set up in {time.perf_counter() - t0:.0f} s: {len(src)} examples, mean {statistics.fmean(src):.0f}"
          f" source / {statistics.fmean(tgt):.0f} target tokens; LoRA {shared['counts'].lora_params / 1e6:.1f}M",
          flush=True)
    for rung in rungs:
        limit = min(float((args.rung_limit or {}).get(rung.name.split()[0], rung.limit_s)),
                    args.deadline - time.time() - 2)
        with Watchdog(rows_path, rung.name, max(limit, 1)):
            row = one_rung(st, rung, args, shared)
        done = [r for r in read_rows(rows_path) if r.get("kind") == "rung" and not r.get("error")]
        if not row.get("error"):
            row["loss_diff"] = loss_diff(row, done)
        write_row(rows_path, row)
        print(f"[rungs] {rung.name}: " + (row.get("error") or f"{row['median_ms']:.1f} ms/step, "
              f"{row['tokens_per_s']:,.0f} tok/s, MFU {100 * row['mfu']:.2f} %"), flush=True)


def one_rung(st, rung: Rung, args, shared: dict) -> dict:
    """run_rung, or a row naming its error (out of memory, say): the next rungs still run."""
    import torch

    try:
        return run_rung(st, rung, args, shared)
    except Exception as err:  # noqa: BLE001 - one failed rung must not hide the others
        from hql_ray.training.step import why

        st.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"kind": "rung", "rung": rung.name, "error": f"failed: {why(err)}"}


def node_stage(args) -> None:
    """train_node end to end on rung 5's settings (no Ray, a LocalContext): steps, validation, the adapter."""
    quiet()
    from hql_ray.training import node
    from hql_ray.training.context import LocalContext

    device = device_of(args)
    settings = {**ladder(args.dry_run)[4].settings, "train.max_steps": 4, "train.eval_every": 2}
    cfg = check_config(args, settings)
    t0 = time.perf_counter()
    result = node.train_node(cfg, node_spec(cfg, args.dry_run), [], LocalContext(device=device))
    m = result.metrics
    row = {"kind": "node", "seconds": time.perf_counter() - t0, "steps": m.steps,
           "initial_val_loss": m.initial_val_loss, "val_loss": m.val_loss,
           "adapter_tensors": len(result.adapter.tensors) if result.adapter else 0}
    row["summary"] = (f"{row['steps']} steps in {row['seconds']:.0f} s, validation loss {row['initial_val_loss']:.3f}"
                      f" -> {row['val_loss']:.3f}, adapter of {row['adapter_tensors']} tensors")
    print(f"[node] {row['summary']}", flush=True)
    write_row(args.out / "gpu_check.jsonl", row)
