"""Model FLOPs utilisation (MFU) of the node's QLoRA training step: a ladder of changes, one at a time.

Issue 12. One process loads an mt5-large-shaped model once (random weights from the config, untied
head as in google/mt5-large, NF4 4-bit with double quant, a fresh LoRA r=256 on q,k,v,o,wi_0,wi_1,wo
as hql_ray.training.node builds it), then runs each variant from the same initial LoRA and seed. Each variant
adds ONE change to the one before and its row is printed as soon as it finishes, so a time limit
still leaves the rows before it:

  V0 today          the step of hql_ray.training.node.train_node as of issue 12: transformers' Adafactor,
                    loss read back every step, fp32 LoRA/wo/head/loss, batches of 8 examples
  V1 +adafactor     hql_ray.training.adafactor.Adafactor (same rule, stacked tensors)
  V2 +lazy loss     the loss summed on the device and read back every --log-every steps; pinned,
                    non-blocking host-to-device copies
  V3 +bf16          forward under torch.autocast(bf16) (fp32 master weights stay), TF32 matmuls
  V4 +compile       torch.compile(dynamic=True) of the forward (and so the backward); on failure or
                    after --compile-timeout s the ladder goes on in eager mode and says so
  V5 +tokens=N      length-grouped batches of at most N padded tokens (one row per --token-budgets)
  V6 +chunked CE    hql_ray.training.losses: head + cross-entropy --ce-chunk rows at a time (largest budget)

Per row: s/step, real tokens/s, MFU (hql_ray.training.flops: 4 x frozen + 6 x LoRA parameters per real token,
plus attention, over the GPU's dense bf16 peak), HFU (the same on padded tokens), peak GPU memory,
the loss at the last step and the mean over the timed steps. Variants V0-V4 train on the same
batches: their losses should agree (bf16 within ~1e-2, compile's dropout masks differ). A
torch.profiler summary (kernels per step, GPU-busy %, wall ms per step, top kernels) follows the
first, the compiled and the last variant.

Run (GPU):  bash benchmarks/gpu_mfu.sh                           (< 5 min on one H100/H200)
CPU check:  .venv/bin/python benchmarks/gpu_mfu.py --dry-run      (tiny shape, every variant, seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_qlora import memory_peak, sync, synthetic_examples, token_counts  # noqa: E402
from hql_ray.training import flops
from hql_ray.data.batching import collate, length_grouped_batches, token_budget_batches  # noqa: E402

TARGETS = list(flops.LORA_TARGETS)
TINY = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)


def ladder(budgets: list[int]) -> list[tuple[str, dict]]:
    """(name, settings) per variant; each one's settings are the previous one's plus one change."""
    steps = [("V0 today", {}), ("V1 +adafactor", {"optimizer": "foreach"}), ("V2 +lazy loss", {"lazy": True}),
             ("V3 +bf16", {"bf16": True}), ("V4 +compile", {"compile": True})]
    steps += [(f"V5 +tokens={b}", {"budget": b}) for b in budgets]
    steps += [("V6 +chunked CE", {"chunked_ce": True, "budget": max(budgets)})]
    out, settings = [], {"optimizer": "hf", "lazy": False, "bf16": False, "compile": False, "budget": 0,
                         "chunked_ce": False}
    for name, change in steps:
        settings = {**settings, **change}
        out.append((name, dict(settings)))
    return out


# ---- model ----------------------------------------------------------------------------------------
def save_model(config, out_dir: Path, device) -> float:
    """Random weights, encoder/decoder embeddings tied to `shared` and an untied head (as the real
    checkpoint: transformers 5 would otherwise save three vocabulary matrices)."""
    import torch
    from transformers import MT5ForConditionalGeneration

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = MT5ForConditionalGeneration(config)
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    del model
    gc.collect()
    return time.perf_counter() - t0


def lora_settings(r: int):
    """The node's LoRA settings: config.LoraShape (modeling.LoraSettings before the config refactor)."""
    try:
        from hql_ray.settings.config import LoraShape as Lora
    except ImportError:
        from hql_ray.training.modeling import LoraSettings as Lora
    return Lora(r=r, alpha=r, use_rslora=True, dropout=0.05, target_modules=list(TARGETS))


def load_model(model_dir: str, device, r: int):
    """As hql_ray.training.node builds a root node: 4-bit base prepared for k-bit training, a fresh LoRA."""
    from hql_ray.training import handoff, modeling

    model = modeling.load_base_model(model_dir, "qlora", device)
    model = handoff.attach_node_adapter(model, lora_settings(r), "stack", [])
    model.train()
    return model


# ---- one variant ----------------------------------------------------------------------------------
class Deadline:
    """Raise TimeoutError in the main thread after `seconds` (0 = never): bounds a compile warm-up."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def _fire(self, *_):
        raise TimeoutError(f"no result after {self.seconds} s")

    def __enter__(self):
        if self.seconds:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.seconds:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self._old)


def make_batches(examples, s: dict, args, n: int) -> list[dict]:
    """`n` collated batches (pinned when the variant copies asynchronously), chosen as the node does."""
    src = [len(e["input_ids"]) for e in examples]
    tgt = [len(e["labels"]) for e in examples]
    if s["budget"]:
        order = token_budget_batches(src, tgt, s["budget"], seed=0)
    else:
        order = length_grouped_batches([max(a, b) for a, b in zip(src, tgt)], args.batch_size, seed=0)
    if len(order) < n:
        raise SystemExit(f"only {len(order)} batches from {len(examples)} examples; raise --examples")
    batches = [collate([examples[i] for i in idx], 0) for idx in order[:n]]
    if s["lazy"] and args.device.type == "cuda":
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    return batches


def loss_function(model, s: dict, args, compile_fn):
    """The step's loss; with chunked CE only the encoder-decoder is compiled: the chunk loop's trip
    count depends on the batch, which would make dynamo recompile, and its big GEMMs gain nothing."""
    from hql_ray.training import losses

    if s["chunked_ce"]:
        hidden = compile_fn(lambda batch: losses.seq2seq_hidden(model, batch))
        head = losses.base_model(model).lm_head.weight
        return lambda batch: losses.chunked_cross_entropy(hidden(batch), head, batch["labels"], args.ce_chunk)
    return compile_fn(lambda batch: model(**batch).loss)


def run_variant(model, initial: dict, examples, s: dict, args, counts, state: dict) -> dict:
    import torch
    from transformers.optimization import get_linear_schedule_with_warmup

    from benchmarks.dispatch_count import make_optimizer

    device = args.device
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, p0 in zip(params, initial):
            p.copy_(p0)
    torch.manual_seed(0)
    total = args.warmup + args.steps
    batches = make_batches(examples, s, args, total + args.profile_steps)
    optimizer = make_optimizer(s["optimizer"], params, lr=5e-5)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total + args.profile_steps)
    torch.backends.cuda.matmul.fp32_precision = "tf32" if s["bf16"] else "ieee"  # TF32 where fp32 stays
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if s["bf16"] else contextlib.nullcontext()
    compiled = s["compile"] and state.get("compile_ok", True)
    graphs_before = 0
    if compiled:
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = args.recompile_limit  # then that frame runs eagerly
        graphs_before = counters["stats"]["unique_graphs"]
    forward = loss_function(model, s, args, (lambda fn: torch.compile(fn, dynamic=True, backend=args.compile_backend))
                            if compiled else (lambda fn: fn))

    def step(batch, pending):
        batch = {k: v.to(device, non_blocking=s["lazy"]) for k, v in batch.items()}
        with amp:
            loss = forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not s["lazy"]:
            return float(loss.detach())  # a host sync every step, as node.train_node does
        pending.append(loss.detach())
        return None

    note = ""
    losses, pending = [], []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t_warm = time.perf_counter()
    try:
        with Deadline(args.compile_timeout if compiled else 0):
            for i in range(args.warmup):
                step(batches[i], pending)
            sync(device)
    except Exception as err:  # noqa: BLE001 - compile failures come in many types; fall back to eager
        if not compiled:
            raise
        if os.environ.get("HQL_MFU_TRACE"):
            raise
        state["compile_ok"] = False
        note = f"compile failed ({why(err)}); eager"
        print(f"  {note}", flush=True)
        optimizer.zero_grad(set_to_none=True)
        return run_variant(model, initial, examples, {**s, "compile": False}, args, counts, state) | {"note": note}
    warm_s = time.perf_counter() - t_warm

    real = padded = 0
    flops_real = flops_padded = 0.0
    sync(device)
    t0 = time.perf_counter()
    for i in range(args.warmup, total):
        batch = batches[i]
        r, p = token_counts(batch)
        real, padded = real + r, padded + p
        src, tgt = flops.batch_lengths(batch)
        flops_real += flops.step_flops(counts, src, tgt)
        flops_padded += flops.step_flops(counts, [batch["input_ids"].shape[1]] * len(src),
                                         [batch["labels"].shape[1]] * len(tgt))
        loss = step(batch, pending)
        if loss is not None:
            losses.append(loss)
        elif (i + 1 - args.warmup) % args.log_every == 0 or i + 1 == total:
            losses.extend(torch.stack(pending).tolist())  # one sync per log_every steps
            pending.clear()
    sync(device)
    elapsed = time.perf_counter() - t0
    timed = losses[-args.steps:]
    out = {"s_per_step": elapsed / args.steps, "real_tok_s": real / elapsed, "pad_share": 1 - real / padded,
           "tflops": flops_real / elapsed / 1e12, "hfu_tflops": flops_padded / elapsed / 1e12,
           "peak_gib": memory_peak(device), "loss_last": timed[-1], "loss_mean": statistics.fmean(timed),
           "examples_per_step": statistics.fmean(len(b["input_ids"]) for b in batches[args.warmup:total]),
           "warmup_s": warm_s, "compiled": compiled, "note": note}
    if compiled:
        from torch._dynamo.utils import counters

        out["graphs"] = counters["stats"]["unique_graphs"] - graphs_before  # > 1: recompiled for new shapes
        out["note"] = f"{out['graphs']} compiled graphs, warm-up {warm_s:.0f} s"
    if args.profile_now:
        try:  # a profiler problem must not cost the variant's row
            out["profile"] = profile(step, batches[total:], pending, args)
        except Exception as err:  # noqa: BLE001
            print(f"  profile failed: {why(err)}", flush=True)
    del optimizer, scheduler
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def why(err: BaseException) -> str:
    """One line naming the error; dynamo's wrapper says 'backend=... raised:' and the cause on the next line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith("raised:"):
        lines = lines[1:]
    return f"{type(err).__name__}: {lines[0][:160] if lines else ''}"


def profile(step, batches, pending, args) -> dict:
    """torch.profiler over a few extra steps: kernels and GPU time per step, GPU-busy share."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    cuda = args.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(args.device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for batch in batches:
            step(batch, pending)
        sync(args.device)
    wall = (time.perf_counter() - t0) / len(batches)
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    gpu = sum(e.self_device_time_total for e in kernels) / 1e6 / len(batches)
    ops = sum(1 for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::"))
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return {"wall_ms": wall * 1e3, "kernels_per_step": len(kernels) / len(batches), "gpu_ms": gpu * 1e3,
            "gpu_busy": gpu / wall if cuda else float("nan"), "aten_ops_per_step": ops / len(batches),
            "top": prof.key_averages().table(sort_by=sort, row_limit=args.top_kernels)}


# ---- main -----------------------------------------------------------------------------------------
def fmt_row(name: str, r: dict, peak: float) -> str:
    mfu = f"{100 * r['tflops'] / peak:6.2f}%" if peak else "     -"
    hfu = f"{100 * r['hfu_tflops'] / peak:6.2f}%" if peak else "     -"
    return (f"{name:<18} {r['s_per_step']:8.3f} {r['real_tok_s']:11,.0f} {r['examples_per_step']:6.1f} "
            f"{r['tflops']:8.2f} {mfu:>7} {hfu:>7} {r['peak_gib']:8.2f} {r['loss_last']:9.4f} {r['loss_mean']:9.4f}"
            + (f"  [{r['note']}]" if r.get("note") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shape on CPU: every variant, no GPU needed")
    parser.add_argument("--steps", type=int, help="timed steps per variant (10; dry run 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (3; dry run 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--r", type=int, help="LoRA rank = alpha (256, the paper's; dry run 8)")
    parser.add_argument("--examples", type=int, help="synthetic examples (3000; dry run 300)")
    parser.add_argument("--log-every", type=int, default=10, help="loss read-back period from V2 on")
    parser.add_argument("--token-budgets", type=int, nargs="+", help="padded tokens per batch (8192 16384)")
    parser.add_argument("--ce-chunk", type=int, default=1024, help="rows per chunk of the chunked loss")
    parser.add_argument("--compile-backend", help="torch.compile backend (inductor; dry run aot_eager)")
    parser.add_argument("--compile-timeout", type=int, default=150, help="s for a compiled warm-up, then eager")
    parser.add_argument("--recompile-limit", type=int, default=4,
                        help="graphs per compiled function before dynamo runs it eagerly (4)")
    parser.add_argument("--profile-steps", type=int, help="profiled extra steps (2; dry run 1)")
    parser.add_argument("--top-kernels", type=int, default=8)
    parser.add_argument("--variants", nargs="+", help="names' prefixes to run, e.g. V0 V1 V4 (all)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak (default: by GPU name, hql_ray.training.flops)")
    parser.add_argument("--out", help="JSON lines, one per variant (default $OUT/mfu.jsonl when $OUT is set)")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.steps = args.steps or (1 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    args.r = args.r or (8 if dry else 256)
    args.examples = args.examples or (300 if dry else 3000)
    args.profile_steps = args.profile_steps if args.profile_steps is not None else (1 if dry else 2)
    args.token_budgets = args.token_budgets or ([1024] if dry else [8192, 16384])
    args.compile_backend = args.compile_backend or ("aot_eager" if dry else "inductor")
    args.log_every = min(args.log_every, args.steps)

    import torch

    if not dry and not torch.cuda.is_available():
        print("gpu_mfu.py needs a CUDA GPU; on CPU run it with --dry-run", file=sys.stderr)
        return 2
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import bitsandbytes
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    args.device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)  # a shared small machine: more threads only fight
    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or (None if dry else flops.peak_tflops(name))
    config = flops.mt5_config(**(TINY if dry else {}))
    counts = flops.count(flops.meta_model(config), args.r)
    print(f"MFU ladder ({'DRY RUN, tiny shape' if dry else 'mt5-large shape'}) on {name}, peak "
          f"{peak or '?'} TFLOP/s bf16; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")
    print(f"LoRA r={args.r} on {','.join(TARGETS)} ({counts.lora_params / 1e6:.1f}M), base "
          f"{counts.matrix_params / 1e6:.1f}M; {args.warmup} warm-up + {args.steps} timed steps per variant; "
          f"compile backend {args.compile_backend}", flush=True)
    examples = synthetic_examples(args.examples, config.vocab_size)
    out_path = args.out or (os.path.join(os.environ["OUT"], "mfu.jsonl") if os.environ.get("OUT") else None)
    variants = [(n, s) for n, s in ladder(args.token_budgets)
                if not args.variants or any(n.startswith(v) for v in args.variants)]
    profiled = {variants[0][0], variants[-1][0]} | {next((n for n, s in variants if s["compile"]), "")}

    t_all = time.perf_counter()
    model_dir = Path(tempfile.mkdtemp(prefix="hql-mfu-model-"))
    try:
        print(f"random model saved in {save_model(config, model_dir, args.device):.1f} s", flush=True)
        t0 = time.perf_counter()
        model = load_model(str(model_dir), args.device, args.r)
        initial = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        print(f"4-bit model + LoRA loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(f"\n{'variant':<18} {'s/step':>8} {'real tok/s':>11} {'ex/st':>6} {'TFLOP/s':>8} {'MFU':>7} {'HFU':>7} "
          f"{'peak GiB':>8} {'loss last':>9} {'loss mean':>9}", flush=True)
    state: dict = {}
    failed = 0
    for name_v, s in variants:
        args.profile_now = name_v in profiled and args.profile_steps > 0
        try:
            r = run_variant(model, initial, examples, s, args, counts, state)
        except Exception as err:  # noqa: BLE001 - one failed variant must not hide the others
            failed += 1
            print(f"{name_v:<18} FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                  flush=True)
            gc.collect()
            continue
        print(fmt_row(name_v, r, peak), flush=True)
        prof = r.pop("profile", None)
        if prof:
            print(f"  profile ({args.profile_steps} steps): wall {prof['wall_ms']:.1f} ms/step, "
                  f"{prof['kernels_per_step']:,.0f} kernels/step, GPU {prof['gpu_ms']:.1f} ms/step "
                  f"(busy {100 * prof['gpu_busy']:.0f}%), {prof['aten_ops_per_step']:,.0f} aten ops/step", flush=True)
            print("\n".join("    " + line for line in prof["top"].splitlines()), flush=True)
        if out_path:
            with open(out_path, "a") as f:
                f.write(json.dumps({"variant": name_v, "settings": s, "gpu": name, "peak_tflops": peak,
                                    **r, **({"profile": {k: v for k, v in prof.items() if k != "top"}} if prof else {})})
                        + "\n")
    print(f"(real tokens = non-pad source + target; MFU on real tokens, HFU on padded shapes; "
          f"ex/st = examples per step; total {time.perf_counter() - t_all:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
