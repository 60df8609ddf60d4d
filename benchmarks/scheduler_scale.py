"""`scheduler.py --scale`: every scheduling policy replayed on many large synthetic trees (no Ray).

For each slot count (default 64 and 32, at most `--max-per-node` workers per node: the batch of 8) and
each seed of `synthetic_tree` (FLORES-200-like, 3-5 levels, ~230-370 nodes), every policy of
`hql_ray.orchestration.scheduling.POLICIES` is replayed by `hql_ray.orchestration.replay` (a node's workers
fixed at its start, changed only at one of its checkpoints, every 500 steps of 8 examples; no worker more
than its global batch allows). Work = examples x `--spe` seconds per example (1 epoch per level).

Printed per seed: makespan / bound, where bound = `scheduling.lower_bound` (max of total work / slots and
the critical path with each node at its max workers), and makespan / `scheduling.subtree_bound` (also a
lower bound, >= the first: the descendants of a node start only after the path down to it; it counts the
slots that a root on 8 workers must leave idle). Then the worst and the mean per policy and slot count,
and the 12-language PTHQL tree (31K examples per language) at 8 slots.

    python benchmarks/scheduler.py --scale                 # 20 seeds x {64, 32} slots; ~2 min on 2 cores
    python benchmarks/scheduler.py --scale --seeds 50 --slot-counts 64 32 16 --start-cost 30 --resize-cost 30
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from common import PTHQL, LEVELS, print_table
from synthetic_tree import synthetic_tree

from hql_ray.orchestration import replay as replay_lib
from hql_ray.orchestration import scheduling
from hql_ray.settings.tree import load_tree

CHECKPOINT_STEPS, BATCH = 500, 8  # train.eval_every (a checkpoint at every validation) and train.batch_size


@dataclass
class Case:
    """One tree on one slot count: its bounds and each policy's makespan."""

    name: str
    levels: int
    nodes: int
    bound: float
    subtree_bound: float
    makespans: dict[str, float]
    resizes: dict[str, int]


def loads_for(examples: dict[str, int], parents: dict[str, str | None], slots: int, args
              ) -> tuple[dict[str, scheduling.NodeLoad], dict[str, float], dict[str, int]]:
    work = {n: e * args.spe for n, e in examples.items()}
    caps = {n: min(slots, scheduling.max_useful_workers(e, args.max_per_node, args.min_examples_per_worker))
            for n, e in examples.items()}
    return scheduling.node_loads(work, parents, caps, examples), work, caps


def policy(name: str, args) -> scheduling.Policy:
    chosen = scheduling.policy_class(name).configured(min_examples_per_worker=args.min_examples_per_worker,
                                                 resize_cost=args.resize_cost, elastic=not args.fixed)
    return scheduling.WithoutProgress(chosen) if args.fixed else chosen  # --fixed: as the real driver asks it


def run_case(name: str, examples: dict[str, int], parents: dict[str, str | None], levels: int, slots: int,
             args) -> Case:
    loads, work, caps = loads_for(examples, parents, slots, args)
    costs = replay_lib.Costs(checkpoint_work=CHECKPOINT_STEPS * BATCH * args.spe, start_cost=args.start_cost,
                             resize_cost=args.resize_cost)
    case = Case(name, levels, len(examples), scheduling.lower_bound(work, parents, slots, caps),
                scheduling.subtree_bound(work, parents, slots, caps), {}, {})
    for policy_name in args.policies:
        result = replay_lib.replay(loads, parents, slots, policy(policy_name, args), costs)
        case.makespans[policy_name], case.resizes[policy_name] = result.makespan, result.resizes
    return case


def synthetic_case(seed: int, slots: int, args) -> Case:
    tree = synthetic_tree(seed, args.languages)
    return run_case(f"seed {seed}", tree.node_examples(), tree.parents, len(tree.levels), slots, args)


def pthql_case(slots: int, args) -> Case:
    tree = load_tree(PTHQL, LEVELS)
    examples = {n: 31000 * len(node.languages) for n, node in tree.nodes.items()}
    return run_case("PTHQL 12", examples, {n: v.parent for n, v in tree.nodes.items()}, len(LEVELS), slots, args)


def print_cases(title: str, cases: list[Case], policies: list[str]) -> None:
    print(f"\n{title}")
    header = ["tree", "levels", "nodes", "subtree/bound"]
    header += ([f"{p} /bound" for p in policies] + [f"{p} /subtree" for p in policies]
               + [f"{p} resizes" for p in policies])
    rows = [[c.name, str(c.levels), str(c.nodes), f"{c.subtree_bound / c.bound:.3f}"]
            + [f"{c.makespans[p] / c.bound:.3f}" for p in policies]
            + [f"{c.makespans[p] / c.subtree_bound:.3f}" for p in policies]
            + [str(c.resizes[p]) for p in policies] for c in cases]
    for label, pick in (("worst", max), ("mean", statistics.mean)):
        rows.append([label, "", "", f"{pick(c.subtree_bound / c.bound for c in cases):.3f}"]
                    + [f"{pick(c.makespans[p] / c.bound for c in cases):.3f}" for p in policies]
                    + [f"{pick(c.makespans[p] / c.subtree_bound for c in cases):.3f}" for p in policies]
                    + [f"{pick(c.resizes[p] for c in cases):.0f}" for p in policies])
    print_table(header, rows)


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=20, help="--scale: synthetic trees, seeds 0..N-1 (default 20)")
    parser.add_argument("--slot-counts", type=int, nargs="+", default=[64, 32], help="--scale: slots (default 64 32)")
    parser.add_argument("--max-per-node", type=int, default=8, help="--scale: workers per node at most (default 8)")
    parser.add_argument("--languages", type=int, default=200, help="--scale: languages per tree (default 200)")
    parser.add_argument("--start-cost", type=float, default=0.0, help="--scale: seconds per launch (default 0)")
    parser.add_argument("--resize-cost", type=float, default=0.0,
                        help="--scale: seconds per resize, also what the policy weighs a growth against (default 0)")
    parser.add_argument("--min-examples-per-worker", type=int, default=64)
    parser.add_argument("--fixed", action="store_true",
                        help="--scale: the policy as the real driver asks it (RunModel): a node keeps its first "
                             "workers, a running node counts with all its work")


def main(args) -> int:
    args.spe = args.spe or 0.015
    args.policies = list(scheduling.POLICIES)
    print(f"scheduler replay at scale: policies {', '.join(args.policies)}; {args.spe:g} s/example, a checkpoint "
          f"every {CHECKPOINT_STEPS} steps of {BATCH}, <= {args.max_per_node} workers per node, start cost "
          f"{args.start_cost:g} s, resize cost {args.resize_cost:g} s"
          + (", fixed workers (no growth)" if args.fixed else ""))
    t0 = time.perf_counter()
    for slots in args.slot_counts:
        cases = [synthetic_case(seed, slots, args) for seed in range(args.seeds)]
        print_cases(f"{slots} slots, {args.seeds} synthetic trees of {args.languages} languages", cases, args.policies)
    print_cases("the 12-language PTHQL tree, 8 slots", [pthql_case(8, args)], args.policies)
    print("\n(/bound: makespan / max(total work / slots, critical path at max workers); /subtree: makespan / "
          "the subtree bound, a lower bound too; subtree/bound > 1 where the first bound is out of reach; "
          f"{time.perf_counter() - t0:.0f} s)")
    return 0
