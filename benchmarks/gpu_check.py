"""The GPU check (issue 23): the node's own training step on one H100/H200, rung by rung, in one call.

    device:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl/gpu_check"], timeout_s=600)
    wheels:  .venv/bin/python benchmarks/gpu_wheels.py        (once, on a CPU machine: builds .whl/gpu_check)
    CPU:     python benchmarks/gpu_check.py --dry-run         (tiny widths, a few steps: tests/test_gpu_check.py)

No Ray: every stage is a child process (`--stage`) running the node's code with a LocalContext, each with its
own time limit; rows stream to <out>/gpu_check.jsonl as they finish, so a stage cut short leaves the rows
before it and the next stage starts in a fresh process. Stages:

  preflight  imports (versions), the GPU, its measured bf16 matmul peak and copy bandwidth; the model: a
             random mT5-large (untied head, as google/mt5-large), saved once, with ByT5's byte tokenizer (no
             download: the sample's prompted graphs come out at ~150 tokens, its sentences at ~40)
  rungs      node.setup once (data/sample's 12 languages, the 4-bit base, a fresh LoRA r=256), then per rung:
             its config, node.plan_steps and node.batches_from_step + node.train_step, the node's own step.
             Rung 1 is the node's step before issue 23 (fp32, batch 8, checkpointing, loss read every step,
             eager); each later rung changes one thing; token budgets next; compiled rungs last.
  node       train_node(..., LocalContext("cuda")) end to end: a few steps, validation, the adapter
  summary    the table, then PASS/FAIL against >= 10 % MFU at batch 8 and >= 30 % with token budgets

Per rung: median and p90 step time (CUDA events between step starts), real tokens/s, MFU (hql_ray.training.flops:
4 x frozen + 6 x LoRA weights per real token, plus attention) against 989 TFLOP/s and against the measured peak,
peak memory, the per-step loss difference from the rung with the same batches (dropout masks differ once
compiled), compile time, graphs compiled and recompiles in the timed steps, host syncs in one step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPEC_TFLOPS = 989.0  # H100/H200 SXM dense bf16
TARGET_BATCH8, TARGET_TOKENS = 0.10, 0.30
TINY = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)


@dataclass
class Rung:
    """One row of the ladder: its parent's settings plus `change` (config overrides)."""

    name: str
    parent: str | None
    change: dict
    limit_s: int
    settings: dict = field(default_factory=dict)  # the parent's and the change, filled by ladder()


def ladder(dry: bool) -> list[Rung]:
    big, bigger = (512, 1024) if dry else (8192, 16384)
    rungs = [
        Rung("1 today", None, {"train.host_sync": "step", "train.precision": "fp32",
                               "model.gradient_checkpointing": True}, 75),
        Rung("2 +sync-free", "1 today", {"train.host_sync": "log"}, 45),
        Rung("3 +bf16", "2 +sync-free", {"train.precision": "bf16"}, 45),
        Rung("4 -checkpointing", "3 +bf16", {"model.gradient_checkpointing": False}, 45),
        Rung("5 +dequantized base", "4 -checkpointing", {"train.dequantized_base": True}, 45),
        Rung(f"6 tokens {big}", "5 +dequantized base", {"train.batch_tokens": big}, 60),
        Rung(f"7 tokens {bigger} +chunked CE", f"6 tokens {big}",
             {"train.batch_tokens": bigger, "train.chunked_loss": 2048}, 60),
        Rung("8 compiled", "5 +dequantized base", {"train.compile_blocks": True}, 200),
        Rung(f"9 compiled tokens {bigger}", f"7 tokens {bigger} +chunked CE", {"train.compile_blocks": True}, 90),
        Rung("10 compiled +CUDA graphs", "8 compiled", {"train.cuda_graphs": True, "train.pad_to_multiple": 32}, 90),
    ]
    by_name = {r.name: r for r in rungs}
    for r in rungs:
        r.settings = {**(by_name[r.parent].settings if r.parent else {}), **r.change}
    return rungs


# ---- rows ------------------------------------------------------------------------------------------------
def write_row(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the supervisor: stages as child processes, each with its limit ------------------------------------------
def run_stage(args, stage: str, extra: list[str], limit: float) -> int:
    """One child process; killed at `limit` s (its finished rows are already on disk)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--out", str(args.out),
           "--model-dir", str(args.model_dir), *(["--dry-run"] if args.dry_run else []),
           "--warmup", str(args.warmup), "--steps", str(args.steps), *extra]
    try:
        return subprocess.run(cmd, timeout=max(limit, 1)).returncode
    except subprocess.TimeoutExpired:
        print(f"[gpu_check] stage {stage} stopped at its {limit:.0f} s limit", flush=True)
        return 124


def supervise(args) -> int:
    """preflight, the rungs (a cut-short worker is restarted on the rungs left), the node pass, the summary."""
    deadline = time.monotonic() + args.total
    left = lambda: deadline - time.monotonic()  # noqa: E731
    rows_path = args.out / "gpu_check.jsonl"
    if run_stage(args, "preflight", [], min(args.preflight_limit, left())) != 0:
        print("[gpu_check] FAIL preflight (see above): nothing measured", flush=True)
        summary(read_rows(rows_path), args)
        return 3
    todo = [r.name for r in ladder(args.dry_run) if not args.rungs or r.name.split()[0] in args.rungs]
    limits = [f"{k}={v}" for k, v in args.rung_limit.items()]
    strikes = 0
    while todo and left() > args.min_rung_s and strikes < 2:
        code = run_stage(args, "rungs", ["--rungs", *[n.split()[0] for n in todo],
                                         "--deadline", str(time.time() + left()),
                                         *(["--rung-limit", *limits] if limits else [])], left())
        finished = {r["rung"] for r in read_rows(rows_path) if r.get("kind") == "rung"}
        strikes = 0 if finished & set(todo) else strikes + 1
        if code != 0 and todo[0] not in finished:  # it died inside its first rung without a row
            write_row(rows_path, {"kind": "rung", "rung": todo[0], "error": f"the rungs' process exited ({code})"})
            finished.add(todo[0])
        todo = [n for n in todo if n not in finished]
    if not args.skip_node and left() > args.node_limit / 2:
        run_stage(args, "node", [], min(args.node_limit, left()))
    return summary(read_rows(rows_path), args)


def summary(rows: list[dict], args) -> int:
    """The table (rung rows) and the two PASS/FAIL lines."""
    pre = next((r for r in rows if r.get("kind") == "preflight"), {})
    rungs = [r for r in rows if r.get("kind") == "rung"]
    print(f"\n[gpu_check] {pre.get('device', '?')}; bf16 matmul peak measured {pre.get('peak_tflops', 0):.0f} "
          f"TFLOP/s; MFU against {SPEC_TFLOPS:.0f} (and the measured peak)")
    print(f"{'rung':<32}{'med ms':>9}{'p90 ms':>9}{'tok/s':>10}{'ex/st':>7}{'MFU989':>8}{'MFUpk':>7}{'GiB':>7}"
          f"{'dloss':>9}{'comp s':>8}{'graphs':>7}{'recomp':>7}{'syncs':>6}")
    for r in rungs:
        if r.get("error"):
            print(f"{r['rung']:<32}  {r['error']}")
            continue
        print(f"{r['rung']:<32}{r['median_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['tokens_per_s']:>10,.0f}"
              f"{r['examples_per_step']:>7.1f}{100 * r['mfu']:>7.2f}%{100 * r['mfu_measured']:>6.2f}%"
              f"{r['peak_gib']:>7.1f}{r['loss_diff']:>9.2e}{r['compile_s']:>8.1f}{r['graphs']:>7}"
              f"{r['recompiles']:>7}{r['syncs']:>6}" + (f"  [{r['note']}]" if r.get("note") else ""))
    node = next((r for r in rows if r.get("kind") == "node"), None)
    if node:
        print(f"node pass (train_node, LocalContext, no Ray): {node.get('error') or node.get('summary')}")
    lines = [verdict("batch 8", [r for r in rungs if not r.get("error") and not r["batch_tokens"]], TARGET_BATCH8),
             verdict("token budgets", [r for r in rungs if not r.get("error") and r["batch_tokens"]], TARGET_TOKENS)]
    for line in lines:
        print(line)
    write_row(args.out / "gpu_check.jsonl", {"kind": "summary", "lines": lines})
    return 0


def verdict(what: str, rows: list[dict], target: float) -> str:
    if not rows:
        return f"FAIL {what}: no rung finished (target >= {100 * target:.0f} % MFU)"
    best = max(rows, key=lambda r: r["mfu"])
    word = "PASS" if best["mfu"] >= target else "FAIL"
    return (f"{word} {what}: best MFU {100 * best['mfu']:.2f} % of {SPEC_TFLOPS:.0f} TFLOP/s "
            f"({100 * best['mfu_measured']:.2f} % of the measured peak) at rung '{best['rung']}', "
            f"target >= {100 * target:.0f} %")


# ---- command line ----------------------------------------------------------------------------------------------
def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny widths, a few steps (the test suite's)")
    parser.add_argument("--out", type=Path, help="rows and log (default $OUT, else ./gpu_check_out)")
    parser.add_argument("--work", type=Path, help="model, caches, runs (default a folder under /tmp)")
    parser.add_argument("--model-dir", type=Path, help="the saved random model (default under --work)")
    parser.add_argument("--total", type=float, help="seconds for everything (500; dry run 900)")
    parser.add_argument("--warmup", type=int, help="untimed steps per rung (3; dry run 1)")
    parser.add_argument("--steps", type=int, help="timed steps per rung (8; dry run 2)")
    parser.add_argument("--rungs", nargs="+", help="rung numbers to run, e.g. 1 2 7 (all)")
    parser.add_argument("--rung-limit", nargs="+", default=[], metavar="N=SECONDS", help="a rung's own time limit")
    parser.add_argument("--skip-node", action="store_true", help="no train_node pass at the end")
    parser.add_argument("--stage", choices=["preflight", "rungs", "node"], help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.out = Path(args.out or os.environ.get("OUT") or "gpu_check_out").resolve()
    args.work = Path(args.work or Path(tempfile.gettempdir()) / f"hql-gpu-check-{'dry' if dry else 'gpu'}").resolve()
    args.model_dir = Path(args.model_dir or args.work / "model").resolve()
    args.total = args.total or (900 if dry else 500)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    args.steps = args.steps or (2 if dry else 8)
    args.rung_limit = dict(item.split("=", 1) for item in args.rung_limit)
    args.preflight_limit, args.node_limit, args.min_rung_s = (300, 300, 20) if dry else (120, 120, 30)
    for folder in (args.out, args.work):
        folder.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.stage:
        from benchmarks import gpu_check_stages as stages

        {"preflight": stages.preflight, "rungs": stages.rung_stage, "node": stages.node_stage}[args.stage](args)
        return 0
    (args.out / "gpu_check.jsonl").unlink(missing_ok=True)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
