"""GPU QLoRA throughput: hql_ray's node training step against the original's Seq2SeqTrainer path.

Model: an mt5-large-shaped MT5 (google/mt5-large's config: d_model 1024, d_ff 2816, 24+24 layers,
16 heads, d_kv 64, vocab 250112, gated-gelu, untied head) with RANDOM weights built from the config
(no download), saved once to a temp dir, then loaded in 4-bit (NF4, double quant, bf16 compute)
through BitsAndBytesConfig for each path, like hql_ray.training.modeling does.

Paths, each on the same synthetic examples (random token ids; input lengths ~ lognormal(median
150) clipped to 60..400, targets 0.3 x input x lognormal(0, 0.25) clipped to 20..120), batch size 8,
N warm-up steps then M timed steps:

  ours           modeling.load_base_model(dir, "qlora", cuda) + handoff.attach_node_adapter (a
                 root node: fresh LoRA r=256, alpha 256, rsLoRA, dropout 0.05, q,k,v,o,wi_0,wi_1,wo)
                 and the step of hql_ray.training.node.train_node: collate a length-grouped batch
                 (batching.length_grouped_batches), forward, backward, clip 1.0, Adafactor (lr 5e-5,
                 no relative step), linear schedule, loss read back every step
  hf             the original's path: Seq2SeqTrainer(optim="adafactor", lr 5e-5, linear schedule,
                 group_by_length, bf16 autocast) on the same 4-bit model (from_pretrained with the
                 same BitsAndBytesConfig + prepare_model_for_kbit_training) + PEFT LoRA (same settings)
  ours-autocast  ours with the forward under torch.autocast(bf16), as the Trainer does with bf16=True

Printed per path: real (non-pad) tokens/s over the timed steps, seconds/step, padded share, model
memory after load and peak GPU memory; and the ratio of each path to hf.

Run (GPU):  python benchmarks/gpu_qlora.py                 (~3-5 min on an H100; --steps M, --warmup N)
            bash benchmarks/gpu_run.sh [args]              (device machine: installs the wheel bundle first)
CPU check:  .venv/bin/python benchmarks/gpu_qlora.py --dry-run   (tiny shape, 1 + 2 steps per path)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hql_ray.data.batching import collate, length_grouped_batches  # noqa: E402  (torch only: fine on a bare GPU image)

TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
PATHS = ("ours", "hf", "ours-autocast")


# ---- model and data -------------------------------------------------------------------------------
def model_config(dry_run: bool):
    from transformers import MT5Config

    common = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                  pad_token_id=0, eos_token_id=1, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128)
    if dry_run:
        return MT5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                         num_heads=4, **common)
    # google/mt5-large
    return MT5Config(vocab_size=250112, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                     num_heads=16, **common)


def save_random_model(config, out_dir: Path, device) -> float:
    """Random weights from the config, built on `device` (fast init on a GPU), saved as safetensors."""
    import torch
    from transformers import MT5ForConditionalGeneration

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = MT5ForConditionalGeneration(config)
    if device.type == "cuda":
        model = model.to(torch.bfloat16)  # half the bytes to write and read; it is quantized on load anyway
    model.save_pretrained(str(out_dir), safe_serialization=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def synthetic_examples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Random token ids with an AMR-to-text-like length distribution (see the module docstring)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = min(max(round(rng.lognormvariate(math.log(150), 0.45)), 60), 400)
        tgt = min(max(round(0.3 * src * rng.lognormvariate(0, 0.25)), 20), 120)
        out.append({"input_ids": [rng.randrange(3, vocab) for _ in range(src - 1)] + [1],
                    "labels": [rng.randrange(3, vocab) for _ in range(tgt - 1)] + [1]})
    return out


def token_counts(batch) -> tuple[int, int]:
    """(real tokens, padded tokens) of a collated batch: source + target."""
    real = int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
    padded = batch["input_ids"].numel() + batch["labels"].numel()
    return real, padded


# ---- measurement helpers --------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def memory_start(device) -> float:
    import torch

    if device.type != "cuda":
        return float("nan")
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**30


def memory_peak(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the paths --------------------------------------------------------------------------------------
def run_ours(model_dir: str, examples: list[dict], args, device, autocast: bool) -> dict:
    import torch
    from transformers.optimization import Adafactor, get_linear_schedule_with_warmup

    from hql_ray.training import handoff, modeling
    from hql_ray.settings.config import LoraShape

    model = modeling.load_base_model(model_dir, "qlora", device, gradient_checkpointing=args.gradient_checkpointing)
    lora = LoraShape(r=args.r, alpha=args.r, use_rslora=True, dropout=0.05, target_modules=list(TARGETS))
    model = handoff.attach_node_adapter(model, lora, "stack", [])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    mem_model = memory_start(device)
    optimizer = Adafactor(params, lr=5e-5, scale_parameter=False, relative_step=False, warmup_init=False,
                          weight_decay=0.0)
    total = args.warmup + args.steps
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, total)
    lengths = [max(len(e["input_ids"]), len(e["labels"])) for e in examples]
    batches = length_grouped_batches(lengths, args.batch_size, seed=0)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if autocast and device.type == "cuda"
           else contextlib.nullcontext())
    real = padded = 0
    losses = []
    t0 = time.perf_counter()
    for step in range(total):
        if step == args.warmup:
            sync(device)
            t0, real, padded = time.perf_counter(), 0, 0
        batch = collate([examples[i] for i in batches[step % len(batches)]], 0)
        r, p = token_counts(batch)
        real, padded = real + r, padded + p
        batch = {k: v.to(device) for k, v in batch.items()}
        with amp:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # node.train_node reads the loss back every step too
    sync(device)
    elapsed = time.perf_counter() - t0
    out = {"seconds": elapsed, "real": real, "padded": padded, "mem_model": mem_model, "mem_peak": memory_peak(device),
           "loss": losses[-1], "trainable": sum(p.numel() for p in params)}
    del model, optimizer, scheduler, params
    free(device)
    return out


def run_hf(model_dir: str, examples: list[dict], args, device) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForSeq2SeqLM, BitsAndBytesConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              TrainerCallback)
    from transformers.trainer_callback import PrinterCallback

    cuda = device.type == "cuda"
    cdtype = torch.bfloat16 if cuda else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=cdtype)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, quantization_config=quant, device_map={"": device},
                                                  dtype=cdtype)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=args.r, lora_alpha=args.r,
                                             use_rslora=True, lora_dropout=0.05, target_modules=TARGETS, bias="none"))
    mem_model = memory_start(device)
    counts: list[tuple[int, int]] = []

    def counting_collator(rows):
        batch = collate(rows, 0)
        counts.append(token_counts(batch))  # batch i feeds step i, even when the loader fetches ahead
        return batch

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step == args.warmup and "start" not in marks:
                sync(device)
                marks["start"] = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step == args.warmup + args.steps:
                sync(device)
                marks["end"] = time.perf_counter()

    fields = Seq2SeqTrainingArguments.__dataclass_fields__
    grouping = ({"group_by_length": True} if "group_by_length" in fields
                else {"train_sampling_strategy": "group_by_length"})
    tmp = tempfile.mkdtemp(prefix="hql-gpu-hf-")
    targs = Seq2SeqTrainingArguments(
        output_dir=tmp, per_device_train_batch_size=args.batch_size, learning_rate=5e-5, optim="adafactor",
        lr_scheduler_type="linear", warmup_steps=0, max_steps=args.warmup + args.steps, bf16=cuda,
        use_cpu=not cuda, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True, max_grad_norm=1.0, **grouping,
    )
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=examples, data_collator=counting_collator,
                             callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would interleave with our table
    result = trainer.train()
    sync(device)
    timed = counts[args.warmup: args.warmup + args.steps]
    out = {"seconds": marks["end"] - marks["start"], "real": sum(c[0] for c in timed),
           "padded": sum(c[1] for c in timed), "mem_model": mem_model, "mem_peak": memory_peak(device),
           "loss": result.training_loss, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    del trainer, model
    shutil.rmtree(tmp, ignore_errors=True)
    free(device)
    return out


# ---- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="timed steps per path (default 30; dry run 2)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per path, not timed (default 5; dry run 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--r", type=int, default=256, help="LoRA rank = alpha (default 256, the paper's)")
    parser.add_argument("--examples", type=int, default=2000, help="synthetic examples (default 2000)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for every path (default off)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny-shaped model on CPU, bf16 off: exercises every path in seconds, no GPU needed")
    parser.add_argument("--keep-model", metavar="DIR", help="save the random model here and keep it")
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (2 if args.dry_run else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_qlora.py needs a CUDA GPU (torch sees none). On CPU run it with --dry-run to check the code paths.",
              file=sys.stderr)
        return 2
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    t_all = time.perf_counter()
    config = model_config(args.dry_run)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run)"
    import bitsandbytes
    import peft

    print(f"QLoRA throughput ({'DRY RUN, tiny shape' if args.dry_run else 'mt5-large shape'}) on {where}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"bitsandbytes {bitsandbytes.__version__}")
    examples = synthetic_examples(max(args.examples, (args.warmup + args.steps) * args.batch_size), config.vocab_size)
    print(f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps per path, LoRA r=alpha={args.r} "
          f"rsLoRA on {','.join(TARGETS)}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"{len(examples)} synthetic examples")

    model_dir = Path(args.keep_model) if args.keep_model else Path(tempfile.mkdtemp(prefix="hql-gpu-model-"))
    model_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    try:
        print(f"random model built and saved in {save_random_model(config, model_dir, device):.1f} s", flush=True)
        for path in args.paths:
            t0 = time.perf_counter()
            try:
                if path == "hf":
                    results[path] = run_hf(str(model_dir), examples, args, device)
                else:
                    results[path] = run_ours(str(model_dir), examples, args, device, autocast=path == "ours-autocast")
                print(f"  {path}: done in {time.perf_counter() - t0:.1f} s (load + {args.warmup + args.steps} steps)",
                      flush=True)
            except Exception as err:  # noqa: BLE001 - report the path that failed, measure the others
                print(f"  {path}: FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                      flush=True)
                free(device)
    finally:
        if not args.keep_model:
            shutil.rmtree(model_dir, ignore_errors=True)

    print()
    header = ["path", "real tokens/s", "s/step", "padded share", "model GiB", "peak GiB", "trainable M", "last loss",
              "vs hf"]
    widths = [15, 14, 8, 13, 10, 9, 12, 10, 7]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
    base = results.get("hf")
    for path, r in results.items():
        tps = r["real"] / r["seconds"]
        vs = f"{tps / (base['real'] / base['seconds']):.2f}x" if base else "-"
        cells = [path, f"{tps:,.0f}", f"{r['seconds'] / args.steps:.3f}", f"{1 - r['real'] / r['padded']:.3f}",
                 f"{r['mem_model']:.2f}", f"{r['mem_peak']:.2f}", f"{r['trainable'] / 1e6:.1f}", f"{r['loss']:.3f}", vs]
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    print("(real tokens = non-pad source + target tokens of the timed steps; padded share = pad / all tokens fed; "
          "model GiB = allocated after load + LoRA; peak = max allocated during the path; hf's last loss is its mean)")
    print(f"(total {time.perf_counter() - t_all:.0f} s)")
    return 0 if len(results) == len(args.paths) else 1


if __name__ == "__main__":
    sys.exit(main())
