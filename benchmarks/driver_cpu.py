"""Driver CPU per node: the node trainer (its Ray Train controller class made once per process,
hql_ray.orchestration.controller) against Ray's own TorchTrainer (HQL_RAY_STOCK_TRAINER=1), side by side.

Each variant walks the same seeded synthetic tree through the real driver with --simulate (scheduler.py's
`run_policy`: every node a real Ray Train run whose workers sleep), in a fresh process and a fresh local Ray,
and reports the driver process's own CPU (its threads and Ray client; not Ray's other processes) per node.

Run: .venv/bin/python benchmarks/driver_cpu.py                 (30 languages, 8 slots; ~10 min on 2 cores)
     .venv/bin/python benchmarks/driver_cpu.py --languages 12  (quicker)
     .venv/bin/python benchmarks/driver_cpu.py --languages 12 --baseline REV [--variants baseline ours]
         (adds the driver of git revision REV, checked out in a temporary worktree: a change side by side with
         what it changes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, print_table  # noqa: E402

VARIANTS = {"ray": {"HQL_RAY_STOCK_TRAINER": "1"}, "ours": {"HQL_RAY_STOCK_TRAINER": "0"}}


def one_walk(args) -> dict:
    """In this process: one simulated walk, its figures as a dict."""
    import scheduler
    from common import quiet, start_ray, temp_dir

    quiet()
    sched_args = scheduler.parse_args(["--synthetic", str(args.languages), "--seed", str(args.seed),
                                       "--slots", str(args.slots), "--policies", "ours", "--spe", str(args.spe),
                                       "--set", f"resources.max_workers_per_node={args.max_per_node}"])
    start_ray(num_cpus=2, num_gpus=args.slots)
    with temp_dir("hql-bench-driver-cpu-") as out:
        tree = scheduler.synthetic_tree(args.seed, args.languages, None)
        sched_args.tree = str(scheduler.write_tree_csv(tree, out / "tree.csv"))
        sched_args.levels, sched_args.sizes = tree.levels, tree.examples
        outcome = scheduler.run_policy("ours", args.spe, sched_args, out)
    nodes = len(outcome.manifest.nodes)
    return {"nodes": nodes, "driver_cpu_ms_per_node": 1000 * outcome.driver_cpu / nodes,
            "makespan_s": outcome.makespan, "slots_free": outcome.slots_free_at_end}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", type=int, default=30, help="synthetic tree size (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=8, help="logical GPU slots (default 8)")
    parser.add_argument("--max-per-node", type=int, default=4, help="workers per node at most (default 4)")
    parser.add_argument("--spe", type=float, default=1e-6, help="simulated seconds per example (default 1e-6)")
    parser.add_argument("--baseline", metavar="REV", help="also walk with the hql_ray of git revision REV")
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, "baseline"],
                        help="which walks (default: ray ours, and baseline with --baseline)")
    parser.add_argument("--variant", choices=[*VARIANTS, "baseline"], help=argparse.SUPPRESS)  # a child's walk
    args = parser.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(one_walk(args)), flush=True)
        return 0
    print(f"driver CPU per node: {args.languages}-language synthetic tree (seed {args.seed}), {args.slots} slots, "
          f"<= {args.max_per_node} workers per node, {args.spe:g} s/example; {machine()}", flush=True)
    variants = args.variants or [*(["baseline"] if args.baseline else []), *VARIANTS]
    with tempfile.TemporaryDirectory(prefix="hql-bench-baseline-") as checkout:
        if "baseline" in variants:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", checkout, args.baseline],
                           check=True, capture_output=True)
        try:
            figures = {variant: walk_in_child(variant, args, checkout) for variant in variants}
        finally:
            if "baseline" in variants:
                subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", checkout],
                               check=False, capture_output=True)
    if any(f is None for f in figures.values()):
        return 1
    names = {"ray": "Ray's TorchTrainer", "ours": "this checkout", "baseline": f"revision {args.baseline}"}
    print_table(["driver", "nodes", "driver CPU ms/node", "makespan s", "slots free at end"],
                [[names[v], str(f["nodes"]), f"{f['driver_cpu_ms_per_node']:.0f}", f"{f['makespan_s']:.0f}",
                  f["slots_free"]] for v, f in figures.items()])
    for other in [v for v in variants if v != "ours"]:
        if "ours" in figures:
            ratio = figures["ours"]["driver_cpu_ms_per_node"] / figures[other]["driver_cpu_ms_per_node"]
            print(f"this checkout / {names[other]}: driver CPU per node x{ratio:.2f}")
    return 0


def walk_in_child(variant: str, args, checkout: str) -> dict | None:
    """One walk in a fresh process (and so a fresh local Ray); the baseline's is REV's own benchmark script
    walking "ours" with REV's hql_ray first on the path (Ray's workers inherit it)."""
    env, script = {**os.environ, **VARIANTS.get(variant, VARIANTS["ours"])}, __file__
    if variant == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([checkout, *filter(None, [os.environ.get("PYTHONPATH")])])
        script, variant = str(Path(checkout) / "benchmarks" / "driver_cpu.py"), "ours"
    walk = ["--languages", str(args.languages), "--seed", str(args.seed), "--slots", str(args.slots),
            "--max-per-node", str(args.max_per_node), "--spe", str(args.spe)]
    child = subprocess.run([sys.executable, script, *walk, "--variant", variant],
                           env=env, capture_output=True, text=True, check=False)
    line = next((l for l in child.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(child.stdout[-2000:], child.stderr[-4000:], sep="\n")
        return None
    return json.loads(line[len("RESULT "):])


if __name__ == "__main__":
    raise SystemExit(main())
