"""Speed-up benchmark: the demo tree on 2 real CPU slots against 1, same config otherwise.

The real driver and real training (configs/demo.yaml: PTHQL on data/sample, the tiny mT5 in 4-bit
QLoRA through bitsandbytes on CPU, generation and scoring), run twice in this process on the same
local Ray (2 CPUs): resources.num_gpus=0 with resources.num_cpu_slots=2, then =1. With 2 slots
siblings train at the same time and a node alone (the root) gets 2 data-parallel workers; each
worker has 1 CPU (Ray sets its torch threads to 1), so the 1-slot run uses one core for training.

Before timing, the tiny model and every language's tokenized splits are built once in a shared
cache, so neither run pays for them. The 2-slot run goes first, so any cold-start cost (first Ray
Train fit, page cache) falls on it and not on the baseline.

Run: .venv/bin/python benchmarks/speedup.py --quick   (3 nodes, full epochs; ~6 min)
     .venv/bin/python benchmarks/speedup.py           (the demo as configured, 21 nodes; ~15 min quiet)
     extra overrides: --set train.max_steps=50 eval.at_nodes=leaves
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEMO, Stopwatch, all_done, demo_config, machine, makespan, print_table, quiet,  # noqa: E402
                    settings_line, start_ray, temp_dir, warm_caches)

# Quick mode: the top two levels only (3 nodes: the root, Germanic, Romance), full epochs. Few fits
# with real work each, so the comparison is about training in parallel rather than Ray start-up.
QUICK_OVERRIDES = [
    "tree.levels=[level0, level1]",
    "data.max_validation_per_language=10",
    "eval.at_nodes=leaves",
    "eval.max_new_tokens=16",
]


def run_slots(config_file: str, overrides: list[str], slots: int, out: Path) -> dict:
    from hql_ray.orchestration.driver import Driver

    cfg = demo_config(config_file, [*overrides, f"run.output_dir={out}", f"run.name=slots{slots}",
                                    "resources.num_gpus=0", f"resources.num_cpu_slots={slots}"])
    print(f"  {slots} slot(s) ...", flush=True)
    watch = Stopwatch()
    manifest = Driver(cfg).run()
    wall = watch()
    all_done(manifest)
    nodes = manifest.nodes.values()
    print(f"  {slots} slot(s): {wall:.1f} s", flush=True)
    return {
        "slots": slots,
        "wall": wall,
        "makespan": makespan(manifest),
        "node_seconds": sum(v.finished_at - v.started_at for v in nodes),
        "train_seconds": sum(v.metrics.train_seconds or 0.0 for v in nodes),
        "max_workers": max(v.resources.workers for v in nodes),
        "nodes": len(manifest.nodes),
        "per_node": {n: (v.resources.workers, v.finished_at - v.started_at,
                         v.metrics.train_seconds or 0.0) for n, v in manifest.nodes.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + " ".join(QUICK_OVERRIDES))
    parser.add_argument("--config", default=str(DEMO))
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="extra config overrides for both runs (after the quick ones)")
    parser.add_argument("--slots", type=int, nargs=2, default=[2, 1], metavar=("MORE", "FEWER"))
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args(argv)

    quiet()
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.set, "resources.max_failures=0"]
    total = Stopwatch()
    with temp_dir("hql-bench-speedup-", keep=args.keep) as out:
        overrides.append(f"data.cache_dir={out / 'cache'}")
        cfg = demo_config(args.config, overrides)
        print(f"speed-up benchmark ({'QUICK' if args.quick else 'full'}): {machine()}")
        print(f"settings: {settings_line(cfg)}")
        print(f"overrides of {Path(args.config).name}: {' '.join(o for o in overrides if 'cache_dir' not in o)}")
        print(f"warm caches (tiny model, tokenized splits): {warm_caches(cfg):.1f} s")
        start_ray(num_cpus=2, num_gpus=0)
        runs = [run_slots(args.config, overrides, n, out) for n in args.slots]

    more, fewer = runs
    print()
    header = ["CPU slots", "nodes", "wall s", "makespan s", "sum node spans s", "sum train_seconds", "max workers/node"]
    print_table(header, [[str(r["slots"]), str(r["nodes"]), f"{r['wall']:.1f}", f"{r['makespan']:.1f}",
                          f"{r['node_seconds']:.1f}", f"{r['train_seconds']:.1f}", str(r["max_workers"])]
                         for r in runs])
    print("\nper node: workers, span s (start..finish), train_seconds (rank 0, inside train_node)")
    print_table(["node", *(f"{r['slots']} slot(s)" for r in runs)],
                [[n, *(f"{r['per_node'][n][0]}w {r['per_node'][n][1]:.1f} {r['per_node'][n][2]:.1f}" for r in runs)]
                 for n in more["per_node"]])
    print(f"\nspeed-up of {more['slots']} slots over {fewer['slots']}: {fewer['wall'] / more['wall']:.2f}x wall "
          f"({fewer['makespan'] / more['makespan']:.2f}x makespan); ideal {more['slots'] / fewer['slots']:.1f}x")
    print("(wall: Driver.run() incl. preflight and results; makespan: first node start .. last node finish; "
          "sum node spans > makespan means nodes overlapped)")
    print(f"(total {total():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
