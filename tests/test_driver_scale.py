"""The real driver on a big tree (issue 25): a synthetic tree of >= 150 nodes (benchmarks/synthetic_tree.py)
walked on local Ray by the simulated trainer (each node a real Ray Train run whose workers only sleep), with
resources.policy asked through `RunModel.allocate`.

The driver's decisions are the run model's: the driver's own order of events (which nodes were done and
which were running when it decided) replayed through a fresh `RunModel` gives the same launches, worker
counts included, at every decision. Every node ends done and the run leaves no slot held."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from hql_ray.orchestration import replay as replay_lib
from hql_ray.orchestration import scheduling
from hql_ray.orchestration.driver import Driver
from hql_ray.orchestration.run_model import RunModel
from hql_ray.settings.config import make_config
from hql_ray.settings.records import NodeDone, NodeStarted
from hql_ray.settings.tree import load_tree
from hql_ray.training.simulate import Simulation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.synthetic_tree import synthetic_tree, write_tree_csv  # noqa: E402

SLOTS = 4  # the tests' Ray (conftest.ray_session): 4 logical GPU slots


def replayed_decisions(model: RunModel, sizes: dict[str, int], slots: int, events: list
                       ) -> list[tuple[dict[str, int], dict[str, int]]]:
    """(what the run model decides, what the driver launched) at each of the driver's decisions: a run of
    NodeStarted events is one `allocate` call (one always takes every free slot or every ready node it can
    use, so the next call launches nothing before a node is done)."""
    status = {n: "pending" for n in model.tree.nodes}
    running: dict[str, int] = {}
    out, i = [], 0
    while i < len(events):
        if isinstance(events[i], NodeDone):
            status[events[i].node] = "done"
            running.pop(events[i].node)
            i += 1
            continue
        launched = {}
        while i < len(events) and isinstance(events[i], NodeStarted):
            launched[events[i].node] = events[i].workers
            i += 1
        ready = model.ready(status, set(running), set())
        out.append((model.allocate(ready, sizes, slots - sum(running.values()), dict(running)), launched))
        running.update(launched)
    return out


def model_and_sizes(cfg, examples: dict[str, int]) -> tuple[RunModel, dict[str, int]]:
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    sizes = {n: sum(examples[lang.code] for lang in node.languages) for n, node in tree.nodes.items()}
    return RunModel(cfg.with_absolute_paths(), tree), sizes


def replay_events(model: RunModel, sizes: dict[str, int], slots: int) -> tuple[list, dict[str, int]]:
    """The dry run's replay of the whole tree as the driver's events (at one time, finishes before starts),
    and its workers per node (`RunModel.replay`)."""
    loads = scheduling.tree_loads(model.cfg, model.tree, sizes)
    parents = {n: node.parent for n, node in model.tree.nodes.items()}
    result = replay_lib.replay(loads, parents, slots, model.policy)
    timed = [(t, 0, n, NodeDone(n)) for n, t in result.finishes.items()]
    timed += [(t, 1, n, NodeStarted(n, result.workers[n][0])) for n, t in result.starts.items()]
    starts = {n: counts[0] for n, counts in model.replay(sizes, slots, set()).items()}  # (no growth: all [w])
    return [event for *_, event in sorted(timed, key=lambda item: item[:3])], starts


def slots_back(ray, timeout: float = 60.0) -> bool:
    """Every GPU slot and CPU of the session's Ray is free again (a run that ends holds none)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        free, total = ray.available_resources(), ray.cluster_resources()
        if all(free.get(kind, 0) >= total[kind] for kind in ("GPU", "CPU")):
            return True
        time.sleep(1.0)
    return False


def synthetic_config(tmp_path: Path, corpus: Path, languages: int, policy: str):
    tree = synthetic_tree(0, languages, depth=3)
    path = write_tree_csv(tree, tmp_path / "tree.csv")
    overrides = tiny_overrides(tmp_path / "runs", corpus, path, **{
        "run.name": f"scale-{policy}", "tree.levels": f"[{', '.join(tree.levels[:-1])}, language]",
        "resources.num_gpus": SLOTS, "resources.policy": policy})
    return make_config(overrides=overrides), tree


@pytest.mark.parametrize("policy", ["critical-path", "largest-first"])
def test_the_dry_runs_replay_decides_as_the_drivers_allocate(small_corpus, tmp_path, policy):
    """RunModel.replay (the dry run) and RunModel.allocate (the driver) are one rule: the replay's own order
    of events, replayed through allocate, gives the replay's launches."""
    cfg, tree = synthetic_config(tmp_path, small_corpus, 120, policy)
    model, sizes = model_and_sizes(cfg, tree.examples)
    events, workers = replay_events(model, sizes, SLOTS)
    decisions = replayed_decisions(model, sizes, SLOTS, events)
    assert len(model.tree.nodes) >= 150 and set(workers) == set(model.tree.nodes)
    assert [expected for expected, _ in decisions] == [launched for _, launched in decisions]
    assert {n: w for _, launched in decisions for n, w in launched.items()} == workers
    assert max(workers.values()) > 1


def walk(tmp_path: Path, corpus: Path, languages: int, policy: str):
    cfg, tree = synthetic_config(tmp_path, corpus, languages, policy)
    events: list = []
    # 1 microsecond per example: a node's sleep is far below its Ray Train start-up (what the walk costs)
    simulation = Simulation(1e-6, examples_per_language=tuple(sorted(tree.examples.items())))
    manifest = Driver(cfg, simulation=simulation, on_event=events.append).run()
    return cfg, tree.examples, manifest, [e for e in events if isinstance(e, (NodeStarted, NodeDone))]


# A Ray Train run per node (workers that only sleep), ~10 s each on 2 cores: 44 of them in the slow suite
# (7 min), 152 on demand (~25 min; benchmarks/scheduler.py --synthetic measures that walk).
@pytest.mark.slow
@pytest.mark.parametrize("languages, nodes", [
    pytest.param(30, 44, marks=pytest.mark.timeout(1800)),
    pytest.param(120, 152, marks=[pytest.mark.ondemand, pytest.mark.timeout(3 * 3600)])])
def test_the_driver_walks_a_big_tree_as_the_run_model_decides(ray_session, small_corpus, tmp_path, languages, nodes):
    cfg, examples, manifest, events = walk(tmp_path, small_corpus, languages, "critical-path")
    assert len(manifest.nodes) == nodes
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    assert slots_back(ray_session)
    model, sizes = model_and_sizes(cfg, examples)
    decisions = replayed_decisions(model, sizes, SLOTS, events)
    assert sum(len(launched) for _, launched in decisions) == len(manifest.nodes)
    assert [expected for expected, _ in decisions] == [launched for _, launched in decisions]
    assert any(w > 1 for _, launched in decisions for w in launched.values())  # the policy split slots
    assert {n: v.resources.workers for n, v in manifest.nodes.items()} == {
        n: w for _, launched in decisions for n, w in launched.items()}
