"""Scheduler benchmark: the real driver's makespan against the lower bound, and against two baselines.

The REAL driver (`hql_ray.orchestration.driver.Driver`) runs the PTHQL tree on a local Ray with 8 logical GPU
slots; every node is a real Ray Train run whose workers only sleep
(`hql_ray.training.simulate`: seconds_per_example x examples x epochs / workers), 31,000 examples per
language. Three policies, one after the other in this process, on the same Ray:

  ours        the default policy: a child starts as soon as its parent is done; ready nodes share
              the free slots as resources.policy decides (critical-path, up to 8 workers per node)
  sequential  the original: one node at a time, one worker (resources.num_gpus=1)
  level       one GPU per node, level by level (resources.max_workers_per_node=1,
              resources.level_barrier=true)

For each: the makespan from the manifest (first start .. last finish), the lower bound
`scheduling.lower_bound(work, parents, slots, max_per_node)` (max of the critical path and total
work / slots), their ratio, and the same ratio for an overhead-free replay of the driver's rules
(what the policy itself costs). A node's span minus its simulated seconds is the Ray Train per-fit
overhead; the last-finishing chain splits the makespan into work + fit overhead + waiting.

Baselines take 8x (sequential) and 3.5x (level) more work-time than ours, so the full mode runs
them at a smaller seconds_per_example: then each run's ratio to ITS OWN lower bound is what
compares, and the speed-up at equal work is projected as (baseline's lower bound at ours' scale +
the baseline's measured excess seconds) / ours' makespan, next to the ideal (ratio of bounds).

`--scale` (benchmarks/scheduler_scale.py) replays every scheduling policy on many large synthetic trees
instead (no Ray): makespan / lower bound per seed, the worst and the mean.

Run: .venv/bin/python benchmarks/scheduler.py --quick    (3 levels, one small scale; ~5-13 min on 2 busy cores)
     .venv/bin/python benchmarks/scheduler.py            (full tree; 18 min measured on a quiet 2-core machine)
     .venv/bin/python benchmarks/scheduler.py --scale    (replays only; ~2 min)
     .venv/bin/python benchmarks/scheduler.py --synthetic 120 --depth 3 --slots 32 --policies ours --spe 1e-6 \
         --set resources.max_workers_per_node=4    (the real driver on a 152-node tree; ~30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (LEVELS, PTHQL, CpuMeter, all_done, machine, makespan, print_table,  # noqa: E402
                    quiet, start_ray, temp_dir)
import scheduler_scale  # noqa: E402
from synthetic_tree import synthetic_tree, write_tree_csv  # noqa: E402

from hql_ray.data.batch_plan import max_workers  # noqa: E402
from hql_ray.settings.config import make_config  # noqa: E402
from hql_ray.orchestration import replay as replay_lib  # noqa: E402
from hql_ray.orchestration import scheduling  # noqa: E402
from hql_ray.settings import search_space  # noqa: E402
from hql_ray.settings.tree import LanguageTree, load_tree  # noqa: E402
from hql_ray.training.simulate import Simulation  # noqa: E402

DRIVER_RUNS = {
    # name: (config overrides, slots the lower bound may use, max workers per node for the bound).
    # ours: the driver's default resources.policy (critical-path, asked through RunModel.allocate)
    "ours": ([], None, None),
    "sequential": (["resources.num_gpus=1", "resources.policy=largest-first"], 1, 1),
    "level": (["resources.max_workers_per_node=1", "resources.level_barrier=true",
               "resources.policy=largest-first"], None, 1),
}


@dataclass
class Outcome:
    policy: str
    spe: float
    makespan: float
    bound: float
    replay: float  # overhead-free makespan of the same rules
    replay_overhead: float  # the same with every node's fit costing its measured overhead
    overheads: dict[str, float]  # node -> span - simulated seconds
    chain: list[tuple[str, float, float, float]]  # last chain: (node, wait, work, overhead)
    cpu_seconds: float  # CPU used by this process and the local Ray during the run (workers only sleep)
    manifest: object
    driver_cpu: float = 0.0  # CPU seconds of the driver's own process (its threads and Ray client) in the run
    driver_rss_mb: float = 0.0  # the driver process's peak resident memory
    slots_free_at_end: str = ""  # "32/32": every GPU slot free again once the run returned (no leak)
    store_used_mb: float = 0.0  # the object store's bytes still held after the run


def replay_driver(tree: LanguageTree, sizes: dict[str, int], spe: float, cfg, slots: int, max_per_node: int,
                  overhead: dict[str, float] | None = None) -> float:
    """The driver's rules (its readiness, resources.policy, resources.level_barrier) replayed without Ray
    (`hql_ray.orchestration.replay`). `overhead` adds each node's fixed cost per fit (the measured one, to
    check that the policy plus the per-fit overhead explain the measured makespan); none = the policy alone."""
    parents = {n: node.parent for n, node in tree.nodes.items()}
    caps = {n: min(slots, scheduling.max_useful_workers(sizes[n], max_per_node, cfg.resources.min_examples_per_worker))
            for n in tree.nodes}
    loads = scheduling.node_loads({n: spe * sizes[n] for n in tree.nodes}, parents, caps, sizes)
    costs = replay_lib.Costs(node_start=overhead or {})
    policy = scheduling.WithoutProgress(scheduling.policy_for(cfg, elastic=False))  # as RunModel asks it
    return replay_lib.replay(loads, parents, slots, policy, costs,
                             barrier=cfg.resources.level_barrier).makespan


def last_chain(nodes: dict, overheads: dict[str, float]) -> list[tuple[str, float, float, float]]:
    """The chain that finished last, root first: (node, wait before it, its work, its fit overhead)."""
    t_first = min(v.started_at for v in nodes.values())
    chain, node = [], max(nodes, key=lambda n: nodes[n].finished_at)
    while node is not None:
        v = nodes[node]
        before = nodes[v.parent].finished_at if v.parent else t_first
        chain.insert(0, (node, v.started_at - before, v.metrics.simulated_seconds, overheads[node]))
        node = v.parent
    return chain


def run_policy(policy: str, spe: float, args, out: Path) -> Outcome:
    from hql_ray.orchestration.driver import Driver

    extra, bound_slots, bound_max = DRIVER_RUNS[policy]
    overrides = [f"run.output_dir={out}", f"run.name={policy}", f"tree.file={args.tree}",
                 f"tree.levels=[{', '.join(args.levels)}]", f"resources.num_gpus={args.slots}",
                 "resources.max_failures=0", *args.set, *extra]
    cfg = make_config(overrides=overrides)
    sim = Simulation(spe, epochs=1, examples=args.examples, examples_per_language=tuple(sorted(args.sizes.items())))
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    sizes = {n: sum(sim.examples_of(lang.code) for lang in node.languages) for n, node in tree.nodes.items()}
    # A searched node (the `tune:` section) runs num_samples one-worker trials of its whole work.
    trials = {n: search_space.level_spec(cfg, node.level).num_samples for n, node in tree.nodes.items()
              if search_space.searches_level(cfg, node.level)}
    work = {n: spe * sizes[n] * trials.get(n, 1) for n in tree.nodes}
    parents = {n: node.parent for n, node in tree.nodes.items()}
    slots = cfg.resources.num_gpus
    max_per = min(max_workers(cfg.train, cfg.resources.max_workers_per_node), bound_max or slots)
    bound = scheduling.lower_bound(work, parents, slots=bound_slots or args.slots, max_per_node=max_per)
    ideal = replay_driver(tree, sizes, spe, cfg, slots, max_per)

    print(f"  {policy}: {len(tree.nodes)} nodes, {spe:g} s/example, lower bound {bound:.1f} s ...", flush=True)
    t0, cpu0 = time.perf_counter(), own_cpu()
    with CpuMeter() as meter:
        manifest = Driver(cfg, simulation=sim).run()
    driver_cpu = own_cpu() - cpu0 - meter.own_seconds  # (the meter's sampling thread runs in this process)
    print(f"  {policy}: done in {time.perf_counter() - t0:.1f} s (driver wall)", flush=True)
    all_done(manifest)
    nodes = manifest.nodes
    overheads = {n: (v.finished_at - v.started_at) - v.metrics.simulated_seconds for n, v in nodes.items()}
    modelled = replay_driver(tree, sizes, spe, cfg, slots, max_per, overhead=overheads)
    return Outcome(policy, spe, makespan(manifest), bound, ideal, modelled, overheads, last_chain(nodes, overheads),
                   meter.seconds, manifest, driver_cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   *leftovers())


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def leftovers(wait_s: float = 30.0) -> tuple[str, float]:
    """("free/total" GPU slots once they are all back or `wait_s` passed, object store MB still used)."""
    import ray

    deadline = time.time() + wait_s
    while True:
        free, total = ray.available_resources(), ray.cluster_resources()
        if free.get("GPU", 0) >= total.get("GPU", 0) or time.time() > deadline:
            break
        time.sleep(0.5)
    store = total.get("object_store_memory", 0) - free.get("object_store_memory", 0)
    return f"{free.get('GPU', 0):g}/{total.get('GPU', 0):g}", store / 2**20


def print_allocation(outcome: Outcome, tree: LanguageTree) -> None:
    nodes = outcome.manifest.nodes
    t0 = min(v.started_at for v in nodes.values())
    print(f"\nallocation per level ({outcome.policy}): node: workers [GPU slot ids] start..finish s")
    for level in tree.levels:
        cells = [f"{v.name}: {v.resources.workers} [{','.join(v.resources.gpu_ids)}] "
                 f"{v.started_at - t0:.0f}..{v.finished_at - t0:.0f}"
                 for v in nodes.values() if v.level == level]
        print(f"  {level}: " + "; ".join(cells))


def print_makespans(outcomes: dict[str, Outcome]) -> None:
    print("\nmakespan against the lower bound (manifest: first start .. last finish)")
    header = ["policy", "s/example", "makespan s", "lower bound s", "ratio", "replay", "replay+overhead",
              "overhead/node s (median, max)", "CPU s/node", "driver CPU ms/node", "driver RSS MB",
              "GPU slots free at end", "object store MB held"]
    rows = []
    for o in outcomes.values():
        ov = list(o.overheads.values())
        rows.append([o.policy, f"{o.spe:g}", f"{o.makespan:.1f}", f"{o.bound:.1f}", f"{o.makespan / o.bound:.3f}",
                     f"{o.replay / o.bound:.3f}", f"{o.replay_overhead / o.bound:.3f}",
                     f"{statistics.median(ov):.1f}, {max(ov):.1f}", f"{o.cpu_seconds / len(ov):.1f}",
                     f"{1000 * o.driver_cpu / len(ov):.0f}", f"{o.driver_rss_mb:.0f}", o.slots_free_at_end,
                     f"{o.store_used_mb:.1f}"])
    print_table(header, rows)
    print("(ratio = makespan / lower bound; replay: the driver's rules replayed without Ray, no overhead; "
          "replay+overhead: the same with each node's measured overhead added to its fit; "
          "overhead/node: node span - simulated seconds; CPU s/node: CPU time of this process and the local Ray during "
          "the run over the nodes: the workers only sleep, so this is Ray Train start-up and teardown, which "
          f"competes for the {os.cpu_count()} cores; driver CPU: the driver process alone, its node threads "
          "and Ray client included)")


def print_chains(outcomes: dict[str, Outcome]) -> None:
    for o in outcomes.values():
        wait = sum(c[1] for c in o.chain)
        work = sum(c[2] for c in o.chain)
        over = sum(c[3] for c in o.chain)
        print(f"\n{o.policy}: last-finishing chain = work {work:.1f} s + Ray Train fit overhead {over:.1f} s "
              f"+ waiting (driver, slots) {wait:.1f} s = {work + over + wait:.1f} s")
        print("  " + " -> ".join(f"{n.split('.', 1)[1]} (wait {w:.1f}, work {k:.1f}, overhead {v:.1f})"
                                 for n, w, k, v in o.chain))


def print_search(outcome: Outcome) -> None:
    """A walk with a searched level: its trials, and the driver's CPU per Ray Train run (nodes + trials)."""
    searched = {n: v for n, v in outcome.manifest.nodes.items() if v.trials}
    if not searched:
        return
    trials = [t for v in searched.values() for t in v.trials]
    counts = ", ".join(f"{status} {sum(t.status == status for t in trials)}"
                       for status in sorted({t.status for t in trials}))
    runs = len(outcome.manifest.nodes) - len(searched) + len(trials)
    print(f"\n{outcome.policy}: {len(searched)} searched nodes, {len(trials)} trials ({counts}), trial time median "
          f"{statistics.median(t.time or 0 for t in trials):.1f} s; {runs} Ray Train runs in all: driver CPU "
          f"{1000 * outcome.driver_cpu / runs:.0f} ms per run; "
          "the replay columns leave the trials out (a searched node as one node)")


def print_excess(ours: Outcome) -> None:
    policy_ratio = ours.replay / ours.bound
    excess = ours.makespan - ours.replay  # what Ray adds beyond the policy itself, in seconds
    if policy_ratio < 1.10 and excess > 0:
        need = excess / (1.10 - policy_ratio)  # lower bound (seconds) at which the same excess is 10 %
        print(f"\nours: Ray adds {excess:.1f} s beyond the policy's own schedule; with that excess, a ratio of "
              f"1.10 needs a lower bound of {need:.0f} s, i.e. --spe {ours.spe * need / ours.bound:.2g} "
              f"(ours' run then ~{(policy_ratio * need + excess) / 60:.0f} min)")


def print_speedup(ours: Outcome, base: Outcome) -> None:
    name = base.policy
    ideal = base.bound / base.spe / (ours.bound / ours.spe)
    if base.spe == ours.spe:
        print(f"\nspeed-up of ours over {name}: {base.makespan / ours.makespan:.2f}x measured at the same "
              f"scale (ideal, ratio of lower bounds: {ideal:.2f}x)")
        return
    excess = base.makespan - base.bound
    projected = (base.bound * ours.spe / base.spe + excess) / ours.makespan
    print(f"\nspeed-up of ours over {name}: {projected:.2f}x projected at equal work "
          f"({name} ran at {base.spe:g} s/example: its lower bound scaled to {ours.spe:g} s/example "
          f"+ its measured excess {excess:.1f} s, over ours' makespan); ideal {ideal:.2f}x; "
          f"ratios to own lower bound: ours {ours.makespan / ours.bound:.3f}, "
          f"{name} {base.makespan / base.bound:.3f}")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: levels level0 level1 level2, every policy at 2e-5 s/example")
    parser.add_argument("--scale", action="store_true", help="replay every policy on synthetic trees (no Ray)")
    parser.add_argument("--spe", type=float,
                        help="seconds per example for ours (full: 2e-3, quick: 2e-5, --scale: 0.015)")
    parser.add_argument("--baseline-spe", type=float,
                        help="seconds per example for the baselines (full: 2e-5, quick: same as --spe)")
    parser.add_argument("--examples", type=int, default=31000, help="examples per language (default 31000)")
    parser.add_argument("--slots", type=int, default=8, help="logical GPU slots (default 8)")
    parser.add_argument("--levels", nargs="+", help=f"tree levels (full: {' '.join(LEVELS)})")
    parser.add_argument("--tree", default=str(PTHQL))
    parser.add_argument("--policies", nargs="+", choices=list(DRIVER_RUNS), default=list(DRIVER_RUNS))
    parser.add_argument("--keep", action="store_true", help="keep the run folders (manifests)")
    parser.add_argument("--synthetic", type=int, metavar="LANGUAGES",
                        help="walk a seeded synthetic tree of this many languages (benchmarks/synthetic_tree.py, "
                             "--seed, --depth; its per-language sizes) instead of --tree")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic: the tree's seed (default 0)")
    parser.add_argument("--depth", type=int, choices=[3, 4, 5], help="--synthetic: levels (default: from the seed)")
    parser.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                        help="config overrides for every policy (e.g. resources.max_workers_per_node=4)")
    scheduler_scale.add_arguments(parser)
    args = parser.parse_args(argv)
    args.sizes = {}  # code -> examples, where they differ from --examples (--synthetic)
    if not args.scale:
        args.levels = args.levels or (LEVELS[:3] if args.quick else LEVELS)
        args.spe = args.spe or (2e-5 if args.quick else 2e-3)
        args.baseline_spe = args.baseline_spe or (args.spe if args.quick else 2e-5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale:
        return scheduler_scale.main(args)
    quiet()
    what = (f"a synthetic tree of {args.synthetic} languages" if args.synthetic else
            f"{Path(args.tree).name}, levels {' '.join(args.levels)}, {args.examples} examples/language")
    print(f"scheduler benchmark ({'QUICK' if args.quick else 'full'}): {what}, {args.slots} logical GPU slots; "
          f"{machine()}")
    t_start = time.perf_counter()
    start_ray(num_cpus=2, num_gpus=args.slots)
    outcomes: dict[str, Outcome] = {}
    with temp_dir("hql-bench-sched-", keep=args.keep) as out:
        if args.synthetic:
            tree = synthetic_tree(args.seed, args.synthetic, args.depth)
            args.tree, args.levels, args.sizes = str(write_tree_csv(tree, out / "tree.csv")), tree.levels, tree.examples
            print(f"synthetic tree: seed {args.seed}, {args.synthetic} languages, levels {' '.join(tree.levels)}, "
                  f"{len(tree.node_examples())} nodes", flush=True)
        for policy in args.policies:
            outcomes[policy] = run_policy(policy, args.spe if policy == "ours" else args.baseline_spe, args, out)
    print_makespans(outcomes)
    print_chains(outcomes)
    for outcome in outcomes.values():
        print_search(outcome)
    if "ours" in outcomes:
        if not args.synthetic:  # (a synthetic tree's hundreds of nodes: the chains and the table say enough)
            print_allocation(outcomes["ours"], load_tree(args.tree, args.levels))
        print_excess(outcomes["ours"])
        for name in ("sequential", "level"):
            if name in outcomes:
                print_speedup(outcomes["ours"], outcomes[name])
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
