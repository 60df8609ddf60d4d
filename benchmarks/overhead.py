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
    from hql_ray.training import handoff
    from hql_ray.orchestration import preflight
    from hql_ray.training.context import LocalContext
    from hql_ray.orchestration.driver import Driver
    from hql_ray.training.node import train_node

    driver = Driver(cfg)  # no Ray here: only its tree and its node payloads
    sizes = preflight.check(cfg, driver.tree)
    cfg_dict = cfg.to_dict()
    to_children: dict[str, list[dict]] = {}
    metrics = {}
    watch = Stopwatch()
    for node_id, node in driver.tree.nodes.items():
        chain = to_children[node.parent] if node.parent else []
        out = train_node(cfg_dict, driver.node_spec(node_id, sizes), chain, LocalContext(device="cpu"))
        to_children[node_id] = handoff.handed_on([*chain, out.adapter], cfg.model.handoff, cfg.model.mode)
        metrics[node_id] = out.metrics
    return watch(), metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + " ".join(QUICK_OVERRIDES))
    parser.add_argument("--config", default=str(DEMO))
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="extra config overrides for both sides (after the quick ones)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args(argv)

    quiet()
    import torch

    overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.set, "resources.max_failures=0",
                 "resources.num_gpus=0", "resources.num_cpu_slots=1"]
    total = Stopwatch()
    with temp_dir("hql-bench-overhead-", keep=args.keep) as out:
        overrides += [f"data.cache_dir={out / 'cache'}", f"run.output_dir={out}"]
        sides = {executor: demo_config(args.config, overrides + [f"run.name={executor}", f"resources.executor={executor}"])
                 for executor in ("ray-train", "warm")}
        cfg = sides["ray-train"]
        print(f"overhead benchmark ({'QUICK' if args.quick else 'full'}): {machine()}")
        print(f"settings: {settings_line(cfg)}")
        print(f"overrides of {Path(args.config).name}: "
              f"{' '.join(o for o in overrides if not o.startswith(('data.cache_dir', 'run.')))}")
        print(f"warm caches (tiny model, tokenized splits): {warm_caches(cfg):.1f} s")

        threads = max(1, int(cfg.resources.cpus_per_worker))
        torch.set_num_threads(threads)
        from hql_ray.training.node import build_model

        watch = Stopwatch()
        build_model(cfg, [], torch.device("cpu"))  # untimed warm-up: lazy imports, bnb kernels
        print(f"bare-side warm-up (one model load): {watch():.1f} s; torch threads {threads}")

        print("  bare loop ...", flush=True)
        bare_wall, bare_metrics = bare_loop(cfg)
        print(f"  bare loop: {bare_wall:.1f} s", flush=True)
        start_ray(num_cpus=2, num_gpus=0)
        measured = {}
        for executor, side_cfg in sides.items():
            print(f"  through Ray, resources.executor={executor} ...", flush=True)
            measured[executor] = through_ray(side_cfg)
            print(f"  through Ray, resources.executor={executor}: {measured[executor][0]:.1f} s", flush=True)
        (ray_wall, ray_span, ray_metrics), (warm_wall, warm_span, warm_metrics) = measured["ray-train"], measured["warm"]

    n = len(bare_metrics)
    print()
    header = ["side", "nodes", "wall s", "sum train_node train_seconds"]
    print_table(header, [
        ["bare train_node loop", str(n), f"{bare_wall:.1f}", f"{sum(m['train_seconds'] for m in bare_metrics.values()):.1f}"],
        ["Ray driver, 1 slot, a Ray Train run per node", str(len(ray_metrics)), f"{ray_wall:.1f}",
         f"{sum(m['train_seconds'] for m in ray_metrics.values()):.1f}"],
        ["Ray driver, 1 slot, warm workers", str(len(warm_metrics)), f"{warm_wall:.1f}",
         f"{sum(m['train_seconds'] for m in warm_metrics.values()):.1f}"],
    ])
    for name, wall, span in (("ray-train", ray_wall, ray_span), ("warm", warm_wall, warm_span)):
        print(f"\n{name} / bare: {wall / bare_wall:.2f}x; orchestration overhead {(wall - bare_wall) / n:.1f} s per node "
              f"({wall - bare_wall:.1f} s over {n} nodes); makespan (first start .. last finish) {span:.1f} s")
    print(f"\nwarm / ray-train: {warm_wall / ray_wall:.2f}x wall")
    same = all(abs(bare_metrics[k]["val_loss"] - m[k]["val_loss"]) < 1e-4 for k in bare_metrics
               for m in (ray_metrics, warm_metrics))
    print(f"(same best validation loss on every node, all sides: {same}; train_seconds: inside train_node, "
          f"data + model load + steps + validation, generation excluded)")
    print(f"(total {total():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
