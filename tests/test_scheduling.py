"""Worker allocation: spare slots go to the biggest nodes, nothing is over-split."""

from __future__ import annotations

import pytest

from hql_ray.orchestration.scheduling import allocate_workers, lower_bound, max_useful_workers


def test_root_gets_every_slot():
    assert allocate_workers([("root", 372000)], 8) == {"root": 8}


def test_two_children_split_evenly():
    assert allocate_workers([("a", 186000), ("b", 186000)], 8) == {"a": 4, "b": 4}


def test_six_nodes_on_eight_slots_use_them_all():
    alloc = allocate_workers([(f"n{i}", 62000) for i in range(6)], 8)
    assert sum(alloc.values()) == 8 and sorted(alloc.values()) == [1, 1, 1, 1, 2, 2]


def test_more_nodes_than_slots_biggest_first():
    alloc = allocate_workers([("small", 100), ("big", 5000), ("mid", 1000)], 2)
    assert alloc == {"big": 1, "mid": 1}


def test_small_nodes_are_not_over_split():
    assert max_useful_workers(100, 8, 64) == 1
    assert allocate_workers([("tiny", 130)], 8, min_examples_per_worker=64) == {"tiny": 2}


def test_no_free_slots():
    assert allocate_workers([("a", 10)], 0) == {}


def test_lower_bound_pthql_shape():
    # 1 root, 2 children, 4 leaves: every language has 1 unit of work.
    parents = {"r": None, "a": "r", "b": "r", "a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    work = {"r": 4, "a": 2, "b": 2, "a1": 1, "a2": 1, "b1": 1, "b2": 1}
    assert lower_bound(work, parents, 4) == 3.0  # total 12 / 4 slots
    assert lower_bound(work, parents, 100) == pytest.approx(0.12)  # total / slots still dominates
    # One worker per node at most: the critical path (4 + 2 + 1) dominates.
    assert lower_bound(work, parents, 100, max_per_node=1) == 7.0


# ---- policies (resources.policy) -----------------------------------------------------------------
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from hql_ray.orchestration import replay as replay_lib  # noqa: E402
from hql_ray.orchestration import scheduling  # noqa: E402
from hql_ray.orchestration.scheduling import (POLICIES, NodeLoad, Running, SchedulerView,  # noqa: E402
                                              WorkerRange, make_policy, node_loads, subtree_bound,
                                              tree_loads)
from hql_ray.data.batch_plan import max_workers  # noqa: E402
from hql_ray.settings.config import SCHEDULING_POLICIES, make_config  # noqa: E402
from hql_ray.settings.errors import ConfigError  # noqa: E402
from hql_ray.settings.tree import load_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.synthetic_tree import synthetic_tree  # noqa: E402


def load(node_id, work, cap=8, below=0.0, subtree=0.0):
    return NodeLoad(node_id, work, cap, below, subtree, size=int(work * 1000))


def test_the_config_names_every_policy_and_checks_it():
    assert set(POLICIES) == set(SCHEDULING_POLICIES) == {"largest-first", "critical-path"}
    assert make_config().resources.policy == "critical-path"
    assert make_config(overrides=["resources.policy=largest-first"]).resources.policy == "largest-first"
    with pytest.raises(ConfigError, match="resources.policy must be one of"):
        make_config(overrides=["resources.policy=fastest"])
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        make_policy("fastest")


def test_global_batch_bounds_the_workers():
    train = make_config(overrides=["train.batch_size=4"]).train
    assert max_workers(train, 16) == 4  # a worker needs one example of every step's batch of 4
    train.batch_per_worker = True
    assert max_workers(train, 16) == 16
    train.batch_per_worker = False
    train.batch_tokens = 4096  # a token budget: the node's smallest batch decides
    assert max_workers(train, 16, smallest_batch=6) == 6 and max_workers(train, 16, smallest_batch=40) == 16
    assert max_workers(train, 16) == 1  # smallest batch unknown: the safe answer


def test_node_loads_chain_below_and_subtree():
    parents = {"r": None, "a": "r", "b": "r", "a1": "a", "b1": "b", "b2": "b"}
    work = {"r": 16, "a": 4, "b": 12, "a1": 4, "b1": 6, "b2": 6}
    loads = node_loads(work, parents, {n: 2 for n in work})
    assert loads["b"].below == 3 and loads["a"].below == 2  # b1 on 2 workers; a1 on 2
    assert loads["r"].below == 6 + 3  # b then b1, each on 2 workers (a's chain is 2 + 2)
    assert loads["r"].chain == 8 + 9 and loads["r"].subtree == 32
    assert subtree_bound(work, parents, slots=4, max_per_node=2) >= lower_bound(work, parents, 4, 2)


def test_subtree_bound_counts_the_slots_a_narrow_root_leaves_idle():
    parents = {"r": None, **{f"c{i}": "r" for i in range(4)}}
    work = {n: 8.0 for n in parents}
    # the root on 2 of 4 slots takes 4; its 4 children (32 of work) need 8 more on 4 slots
    assert lower_bound(work, parents, 4, 2) == 10.0  # total 40 / 4
    assert subtree_bound(work, parents, 4, 2) == 12.0
    loads = node_loads(work, parents, {n: 2 for n in work})
    assert replay_lib.replay(loads, parents, 4, make_policy("critical-path")).makespan == pytest.approx(12.0)


def test_critical_path_starts_the_longest_chain_not_the_biggest_node():
    big_leaf, long_chain = load("big", 100), load("chain", 40, below=50, subtree=400)
    view = SchedulerView([big_leaf, long_chain], [], free_slots=1, total_slots=1)
    assert make_policy("critical-path").decide(view).launches == {"chain": WorkerRange(1, 8)}
    assert make_policy("largest-first").decide(view).launches == {"big": WorkerRange(1, 1)}


def test_the_critical_chain_gets_what_it_needs_before_a_node_with_slack():
    critical = load("critical", 80, below=40, subtree=320)  # its subtree ends at 50 at best
    slack = load("slack", 8)
    decision = make_policy("critical-path").decide(SchedulerView([slack, critical], [], 8, 8))
    # target = max(chains 50, area 408 / 8 = 51): critical needs ceil(80 / (51 - 40)) = 8 workers
    assert decision.launches == {"critical": WorkerRange(8, 8)}
    assert make_policy("largest-first").decide(SchedulerView([slack, critical], [], 8, 8)).launches == {
        "critical": WorkerRange(7, 7), "slack": WorkerRange(1, 1)}


def test_equal_siblings_share_the_slots_evenly():
    # PTHQL's two level-1 nodes (6 languages of 31K examples each, 0.015 s/example): 3 level-2 nodes and
    # 6 leaves below each
    view = SchedulerView([load("a", 2790, below=232, subtree=6975), load("b", 2790, below=232, subtree=6975)], [], 8, 8)
    assert make_policy("critical-path").decide(view).launches == {"a": WorkerRange(4, 8), "b": WorkerRange(4, 8)}


def test_a_running_node_grows_only_at_a_checkpoint():
    policy = make_policy("critical-path")
    busy = Running(load("n", 480), workers=2, remaining=240)
    view = SchedulerView([], [busy], free_slots=6, total_slots=8)
    assert policy.decide(view).resizes == {}  # not at a checkpoint: the slots wait for it
    assert policy.resize(view, "n") == 8  # the driver asks at its checkpoint
    at_checkpoint = SchedulerView([], [Running(busy.load, 2, 240, at_checkpoint=True)], 6, 8)
    assert policy.decide(at_checkpoint).resizes == {"n": 8}
    # growing from 2 to 8 saves 240 * (1/2 - 1/8) = 90 per worker: not worth a restart that costs more
    assert make_policy("critical-path", resize_cost=100).resize(view, "n") is None
    assert make_policy("largest-first").resize(view, "n") is None  # fixed workers


def test_decisions_stay_within_free_slots_and_each_nodes_max():
    rng = random.Random(0)
    for _ in range(300):
        ready = [load(f"r{i}", rng.uniform(1, 100), rng.randint(1, 8), rng.uniform(0, 50), rng.uniform(0, 500))
                 for i in range(rng.randint(0, 6))]
        running = [Running(load(f"u{i}", 100, rng.randint(1, 8), rng.uniform(0, 50)), workers=1,
                           remaining=rng.uniform(1, 100), at_checkpoint=rng.random() < 0.5) for i in range(3)]
        free = rng.randint(0, 12)
        view = SchedulerView(ready, running, free, free + 3)
        for name in POLICIES:
            decision = make_policy(name).decide(view)
            caps = {n.id: n.max_workers for n in ready} | {r.load.id: r.load.max_workers for r in running}
            grown = sum(w - 1 for w in decision.resizes.values())
            assert decision.slots + grown <= free
            assert all(1 <= r.min <= r.max <= caps[n] for n, r in decision.launches.items())
            assert all(1 < w <= caps[n] for n, w in decision.resizes.items())
            assert set(decision.resizes) <= {r.load.id for r in running if r.at_checkpoint}


def test_tree_loads_from_a_run_config(tmp_path):
    tree = load_tree(ROOT / "language_files" / "12langs_pthql.csv", ["level0", "level1", "language"])
    cfg = make_config(overrides=["train.epochs=2", "train.batch_size=4", "resources.min_examples_per_worker=100"])
    sizes = {n: 200 * len(node.languages) for n, node in tree.nodes.items()}
    loads = tree_loads(cfg, tree, sizes)
    assert loads["level0.Indo_European"].work == 2 * 2400 and loads["level0.Indo_European"].max_workers == 4
    assert loads["language.German"].max_workers == 2  # 200 examples, 100 per worker at least


# ---- the replay (what the driver can do) ----------------------------------------------------------
def replay_ratio(examples, parents, slots, policy, cap=8):
    work = {n: 0.015 * e for n, e in examples.items()}
    caps = {n: min(slots, max_useful_workers(e, cap, 64)) for n, e in examples.items()}
    loads = node_loads(work, parents, caps, examples)
    result = replay_lib.replay(loads, parents, slots, make_policy(policy),
                               replay_lib.Costs(checkpoint_work=4000 * 0.015))
    assert result.makespan >= subtree_bound(work, parents, slots, caps) * (1 - 1e-9)  # no policy beats a bound
    assert all(max(w) <= caps[n] for n, w in result.workers.items())
    return result.makespan / lower_bound(work, parents, slots, caps), result.makespan / subtree_bound(
        work, parents, slots, caps)


def test_replay_pthql_at_8_slots():
    tree = load_tree(ROOT / "language_files" / "12langs_pthql.csv", ["level0", "level1", "level2", "language"])
    examples = {n: 31000 * len(node.languages) for n, node in tree.nodes.items()}
    parents = {n: node.parent for n, node in tree.nodes.items()}
    assert replay_ratio(examples, parents, 8, "critical-path")[0] <= 1.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_large_synthetic_trees(seed):
    tree = synthetic_tree(seed)
    examples, parents = tree.node_examples(), tree.parents
    assert len(examples) >= 230
    at_64, _ = replay_ratio(examples, parents, 64, "critical-path")
    assert at_64 <= 1.10
    _, at_32 = replay_ratio(examples, parents, 32, "critical-path")
    assert at_32 <= 1.02  # of the subtree bound: the root on 8 of 32 slots puts the simple bound out of reach
    assert replay_ratio(examples, parents, 32, "largest-first")[1] > 1.10  # the check tells the policies apart


def test_policy_for_a_config_carries_its_options():
    cfg = make_config(overrides=["resources.policy=largest-first", "resources.min_examples_per_worker=10"])
    assert scheduling.policy_for(cfg).min_examples_per_worker == 10
    cfg.resources.policy = "critical-path"
    assert scheduling.policy_for(cfg, resize_cost=5.0).resize_cost == 5.0


def test_replay_with_a_level_barrier_waits_for_the_whole_level():
    parents = {"r": None, "a": "r", "b": "r", "a1": "a", "b1": "b"}
    work = {"r": 1.0, "a": 1.0, "b": 4.0, "a1": 1.0, "b1": 1.0}
    loads = node_loads(work, parents, {n: 1 for n in work})
    free = replay_lib.replay(loads, parents, 2, make_policy("largest-first"))
    assert free.starts["a1"] == 2.0  # right after its parent
    level = replay_lib.replay(loads, parents, 2, make_policy("largest-first"), barrier=True)
    assert level.starts["a1"] == 5.0  # after b, the last of its parent's level
    assert level.makespan == 6.0 and free.makespan == 6.0
