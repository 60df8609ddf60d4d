"""A searched level under --simulate (issue 25): its trials run through Ray Tune as a real search's do, with
made-up validation losses (hql_ray.training.simulate.simulated_losses) for Tune and ASHA to rank."""

from __future__ import annotations

import pytest

from conftest import node_spec, tiny_overrides, with_section
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.config import make_config
from hql_ray.settings.records import NodeStarted
from hql_ray.training import simulate
from hql_ray.training.context import LocalContext
from hql_ray.training.simulate import Simulation, simulated_losses, simulated_node

# Two families of two languages; level1 is searched over three learning rates, one trial each. The walk
# stops at level1 (tree.levels), so its nodes are the leaves: 1 + 2 x 3 Ray Train runs.
TREE = ("code,level0,level1,language\n"
        "aaa_Latn,All,Alpha,Aaa\naab_Latn,All,Alpha,Aab\n"
        "bba_Latn,All,Beta,Bba\nbbb_Latn,All,Beta,Bbb\n")
SEARCH = ("{level1: {num_samples: 1, lora_r: 4, learning_rate: {grid: [3.0e-2, 3.0e-4, 3.0e-6]}, "
          "scheduler: {type: fifo}}, level0: false}")


def search_config(tmp_path, corpus, **extra):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    return make_config(overrides=tiny_overrides(tmp_path / "runs", corpus, tree, **{
        "run.name": "simulated-search", "tree.levels": "[level0, level1]", "resources.num_gpus": 4,
        "tune": SEARCH, **extra}))


def test_made_up_losses_fall_and_rank_the_learning_rates(tmp_path, small_corpus):
    cfg = search_config(tmp_path, small_corpus)
    node = node_spec("level1.Alpha", [("aaa_Latn", "Aaa"), ("aab_Latn", "Aab")], is_leaf=False, examples=2000)
    floors = {}
    for lr in (3e-2, 3e-4, 3e-6):
        losses = simulated_losses(with_section(cfg, "train", learning_rate=lr), node)
        assert len(losses) == simulate.VALIDATIONS + 1 and losses[0] == pytest.approx(10.0)
        assert all(a > b for a, b in zip(losses, losses[1:]))
        floors[lr] = losses[-1]
    assert min(floors, key=floors.get) == 3e-4 and floors[3e-2] == pytest.approx(floors[3e-6])


def test_a_searched_node_reports_each_validation_once(tmp_path, small_corpus):
    cfg = search_config(tmp_path, small_corpus)
    node = node_spec("level1.Beta", [("bba_Latn", "Bba"), ("bbb_Latn", "Bbb")], is_leaf=False, examples=4000)
    ctx = LocalContext()
    result = simulated_node(Simulation(5e-4), node, ctx, cfg)  # 2 s of sleep, 4 slices
    reported = [r["val_loss"] for r in ctx.reports if "val_loss" in r]
    assert reported == simulated_losses(cfg, node)[1:]
    assert result.metrics.val_loss == reported[-1] and result.metrics.initial_val_loss == pytest.approx(10.0)
    assert [h.val_loss for h in result.history] == simulated_losses(cfg, node)
    plain = node_spec("level0.All", [("bba_Latn", "Bba")], is_leaf=False, examples=1000)  # not searched
    ctx = LocalContext()
    assert simulated_node(Simulation(5e-4), plain, ctx, cfg).metrics.val_loss is None
    assert not [r for r in ctx.reports if "val_loss" in r]


@pytest.mark.slow  # ~2 min: 6 trials, each a Tune trial and a Ray Train run
def test_a_simulated_searched_level_runs_its_trials_and_keeps_the_best(ray_session, tmp_path, small_corpus):
    from test_driver_scale import slots_back

    cfg = search_config(tmp_path, small_corpus)
    events: list = []
    manifest = Driver(cfg, simulation=Simulation(2e-4, examples=1000), on_event=events.append).run()
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    for family in ("Alpha", "Beta"):
        entry = manifest.nodes[f"level1.{family}"]
        trials = {t.config.learning_rate: t for t in entry.trials}
        assert sorted(trials) == [3e-6, 3e-4, 3e-2] and {t.status for t in trials.values()} == {"done"}
        best = trials[3e-4]
        assert best.best and entry.metrics.trial.learning_rate == 3e-4
        assert entry.metrics.val_loss == best.value < min(trials[3e-2].value, trials[3e-6].value)
        assert entry.resources.executor == "tune" and best.validations == simulate.VALIDATIONS
        assert entry.started_at >= manifest.nodes["level0.All"].finished_at
    assert manifest.nodes["level0.All"].trials is None  # level0: false, a plain node
    assert {e.node for e in events if isinstance(e, NodeStarted)} == set(manifest.nodes)
    assert slots_back(ray_session)
