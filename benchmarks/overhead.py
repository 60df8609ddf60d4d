"""Orchestration overhead: the same tree through Ray (Driver, 1 slot), with each node a Ray Train run and
with warm workers, against the bare node function.

The three sides train the same nodes with the same config (configs/demo.yaml: the tiny mT5 in 4-bit
QLoRA on CPU, data/sample), one node at a time, parents before children:

  ray    hql_ray.orchestration.driver.Driver on a local Ray with one CPU slot (resources.num_gpus=0,
         num_cpu_slots=1), resources.executor=ray-train: every node is a Ray Train run (a controller,
         its helper actors and a new worker process), adapters go through the object store, the
         keeper persists each adapter, the leaves are exported, results written.
  warm   the same driver with resources.executor=warm (what `auto` picks on a laptop): every node
         runs on one long-lived warm worker (hql_ray/orchestration/warm.py), the rest as above.
  bare   a plain loop in this process: hql_ray.training.node.train_node(cfg, node, chain, LocalContext()),
         each child handed its ancestors' adapter states as the driver does
         (handoff.handed_on), nothing persisted.

The difference over the number of nodes is the per-node cost of orchestration. The bare loop runs
torch with as many threads as a Ray worker gets (resources.cpus_per_worker, 1 by default: Ray sets
a worker's torch threads to its CPUs). Caches (tiny model, tokenized splits) are built before
timing, and the bare side loads the model once untimed, so its lazy imports are not counted.

Run: .venv/bin/python benchmarks/overhead.py --quick   (9 nodes, 20 steps each; ~5 min)
     .venv/bin/python benchmarks/overhead.py           (the demo as configured, 21 nodes; 15 min measured quiet)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEMO, QUICK_OVERRIDES, Stopwatch, all_done, demo_config, machine, makespan,  # noqa: E402
                    print_table, quiet, settings_line, start_ray, temp_dir, warm_caches)


def through_ray(cfg) -> tuple[float, float, dict]:
    from hql_ray.orchestration.driver import Driver

    watch = Stopwatch()
    manifest = Driver(cfg).run()
    wall = watch()
    all_done(manifest)
    return wall, makespan(manifest), {n: v.metrics for n, v in manifest.nodes.items()}


def bare_loop(cfg) -> tuple[float, dict]:
    """train_node for every node in tree order (parents first), chains handed on like the driver."""
    from hql_ray.orchestration import preflight
    from hql_ray.settings.handoffs import handoff_for
    from hql_ray.settings.records import NodeSpec
    from hql_ray.settings.tree import load_tree
    from hql_ray.training.context import LocalContext
    from hql_ray.training.node import train_node

    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    sizes = preflight.check(cfg, tree)
    rule = handoff_for(cfg)
    to_children: dict[str, list] = {}
    metrics = {}
    watch = Stopwatch()
    for node_id, node in tree.nodes.items():
        chain = to_children[node.parent] if node.parent else []
        out = train_node(cfg, NodeSpec.of(node, sizes[node_id]), chain, LocalContext(device="cpu"))
        to_children[node_id] = rule.handed_on([*chain, out.adapter])
        metrics[node_id] = out.metrics
    return watch(), metrics


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + " ".join(QUICK_OVERRIDES))
    parser.add_argument("--config", default=str(DEMO))
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="extra config overrides for both sides (after the quick ones)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    return parser.parse_args(argv)


def measure(args, overrides: list[str], out: Path) -> dict:
    """side -> (wall s, makespan s or None, node -> NodeMetrics), the bare loop first."""
    import torch
    from hql_ray.training.node import build_model

    overrides = [*overrides, f"data.cache_dir={out / 'cache'}", f"run.output_dir={out}"]
    sides = {executor: demo_config(args.config, overrides + [f"run.name={executor}", f"resources.executor={executor}"])
             for executor in ("ray-train", "warm")}
    cfg = sides["ray-train"]
    print(f"settings: {settings_line(cfg)}")
    print(f"overrides of {Path(args.config).name}: "
          f"{' '.join(o for o in overrides if not o.startswith(('data.cache_dir', 'run.')))}")
    print(f"warm caches (tiny model, tokenized splits): {warm_caches(cfg):.1f} s")
    threads = max(1, int(cfg.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    watch = Stopwatch()
    build_model(cfg, [], torch.device("cpu"))  # untimed warm-up: lazy imports, bnb kernels
    print(f"bare-side warm-up (one model load): {watch():.1f} s; torch threads {threads}")
    bare_wall, bare_metrics = bare_loop(cfg)
    print(f"  bare loop: {bare_wall:.1f} s", flush=True)
    measured = {"bare": (bare_wall, None, bare_metrics)}
    start_ray(num_cpus=2, num_gpus=0)
    for executor, side_cfg in sides.items():
        measured[executor] = through_ray(side_cfg)
        print(f"  through Ray, resources.executor={executor}: {measured[executor][0]:.1f} s", flush=True)
    return measured


def report(measured: dict) -> None:
    bare_wall, _, bare_metrics = measured["bare"]
    n = len(bare_metrics)
    names = {"bare": "bare train_node loop", "ray-train": "Ray driver, 1 slot, a Ray Train run per node",
             "warm": "Ray driver, 1 slot, warm workers"}
    print_table(["side", "nodes", "wall s", "sum train_node train_seconds"],
                [[names[side], str(len(m)), f"{wall:.1f}", f"{sum(v.train_seconds or 0 for v in m.values()):.1f}"]
                 for side, (wall, _, m) in measured.items()])
    for name in ("ray-train", "warm"):
        wall, span, _ = measured[name]
        print(f"\n{name} / bare: {wall / bare_wall:.2f}x; orchestration overhead {(wall - bare_wall) / n:.1f} s per node "
              f"({wall - bare_wall:.1f} s over {n} nodes); makespan (first start .. last finish) {span:.1f} s")
    print(f"\nwarm / ray-train: {measured['warm'][0] / measured['ray-train'][0]:.2f}x wall")
    same = all(abs(bare_metrics[k].val_loss - m[k].val_loss) < 1e-4 for k in bare_metrics
               for _, _, m in measured.values())
    print(f"(same best validation loss on every node, all sides: {same}; train_seconds: inside train_node, "
          f"data + model load + steps + validation, generation excluded)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.set, "resources.max_failures=0",
                 "resources.num_gpus=0", "resources.num_cpu_slots=1"]
    total = Stopwatch()
    print(f"overhead benchmark ({'QUICK' if args.quick else 'full'}): {machine()}")
    with temp_dir("hql-bench-overhead-", keep=args.keep) as out:
        measured = measure(args, overrides, out)
    print()
    report(measured)
    print(f"(total {total():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
