"""resources.elastic: a running node grows at a checkpoint when slots free up (issue 25).

The node's side: asked to pause, it writes a checkpoint at its next log step and ends its run; launched
again it goes on from that checkpoint and ends with the adapter of a run never paused. The run model's
side: which running node grows, and when it is not worth a restart. The driver's side (slow): a real
walk on logical GPU slots where a node on 1 worker goes on on 4 once its sibling is done."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.settings.errors import ConfigError
from hql_ray.settings.records import NodeResized, NodeStarted
from hql_ray.settings.tree import load_tree
from hql_ray.training.context import LocalContext
from hql_ray.training.node import train_node
from test_global_batch import EXACT, GERMAN


class PausingContext(LocalContext):
    """What a Ray Train worker's context says once the driver asked its node to pause: from the `at`-th
    question on, a checkpoint is requested, and it is for a pause."""

    def __init__(self, root, at: int):
        super().__init__(checkpoint_root=root, device="cpu")
        self.at, self.asked, self.written = at, 0, []

    def checkpoint_requested(self) -> bool:
        self.asked += 1
        return self.asked >= self.at

    def checkpoint_written(self, step: int) -> None:
        self.written.append(step)

    def pausing(self) -> bool:
        return True


def test_a_paused_node_goes_on_from_its_checkpoint_to_the_adapter_of_one_never_paused(
        small_corpus, four_language_tree, tmp_path):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **EXACT,
                                               **{"train.log_every": 1})).with_absolute_paths()
    torch.manual_seed(0)
    whole = train_node(cfg, GERMAN, [], LocalContext(device="cpu"))

    paused_ctx = PausingContext(tmp_path / "ckpt", at=3)  # asked at steps 1, 2, 3: a pause at step 3
    paused = train_node(cfg, GERMAN, [], paused_ctx)
    assert paused.paused_at == 3 and paused.adapter is None and paused_ctx.written == [3]
    assert (tmp_path / "ckpt" / "latest" / "state.json").is_file()

    resumed = train_node(cfg, GERMAN, [], LocalContext(checkpoint_root=tmp_path / "ckpt", device="cpu"))
    assert resumed.paused_at is None and resumed.metrics.resumed_from_step == 3
    assert [h.val_loss for h in resumed.history if h.val_loss is not None] == \
        [h.val_loss for h in whole.history if h.val_loss is not None]
    assert all(torch.equal(resumed.adapter.tensors[k], whole.adapter.tensors[k]) for k in whole.adapter.tensors)


# ---- the run model ------------------------------------------------------------------------------------
def two_roots(tmp_path, small_corpus, **extra):
    tree = tmp_path / "two.csv"
    tree.write_text("code,language\ndeu_Latn,German\nnld_Latn,Dutch\n")
    overrides = tiny_overrides(tmp_path / "runs", small_corpus, tree, **{
        "tree.levels": "[language]", "resources.num_gpus": 4, "resources.elastic": "true",
        "resources.max_workers_per_node": 4, **extra})
    return make_config(overrides=overrides)


def test_a_running_node_grows_only_where_the_restart_pays(small_corpus, tmp_path):
    from hql_ray.orchestration.run_model import RunModel

    cfg = two_roots(tmp_path, small_corpus)
    model = RunModel(cfg.with_absolute_paths(), load_tree(cfg.tree.file, cfg.tree.levels))
    sizes = {"language.German": 24000, "language.Dutch": 16000}
    # both ready on 4 slots: the bigger on 3, the other on 1 (critical-path's needs)
    assert model.allocate(list(sizes), sizes, 4) == {"language.German": 3, "language.Dutch": 1}
    dutch = {"language.Dutch": 1}
    # German done, Dutch half way on 1 worker: 3 free slots, 8,000 examples left -> all 4 workers
    assert model.resizes(sizes, 3, dutch, {"language.Dutch": 0.5}, {"language.Dutch"}) == {"language.Dutch": 4}
    # nearly done: growing would save less than the restart costs (scheduling.RESIZE_COST)
    assert model.resizes(sizes, 3, dutch, {"language.Dutch": 0.98}, {"language.Dutch"}) == {}
    assert model.resizes(sizes, 3, dutch, {"language.Dutch": 0.5}, set()) == {}  # not resizable (Tune, warm)
    fixed = RunModel(two_roots(tmp_path, small_corpus, **{"resources.elastic": "false"}).with_absolute_paths(),
                     model.tree)
    assert fixed.resizes(sizes, 3, dutch, {"language.Dutch": 0.5}, {"language.Dutch"}) == {}


def test_the_dry_run_plans_the_growth(small_corpus, tmp_path, monkeypatch):
    """`train --dry-run` replays the run model with growth: Dutch starts on 1 worker and goes on on 4 once
    German is done (half of its work left), as the driver would; without resources.elastic it stays on 1."""
    from hql_ray.orchestration import plan, preflight

    sizes = {"language.German": 24000, "language.Dutch": 16000}
    monkeypatch.setattr(preflight, "check", lambda *args, **kwargs: dict(sizes))
    grown = {n.id: n for n in plan.make_plan(two_roots(tmp_path, small_corpus), slots=4).nodes}
    assert (grown["language.German"].workers, grown["language.German"].grows_to) == (3, [])
    assert (grown["language.Dutch"].workers, grown["language.Dutch"].grows_to) == (1, [4])
    dutch_row = next(line for line in plan.render(plan.make_plan(two_roots(tmp_path, small_corpus), slots=4))
                     .splitlines() if line.startswith("language.Dutch"))
    assert " 1->4 " in dutch_row
    fixed = plan.make_plan(two_roots(tmp_path, small_corpus, **{"resources.elastic": "false"}), slots=4)
    assert {n.id: (n.workers, n.grows_to) for n in fixed.nodes} == {"language.German": (3, []),
                                                                     "language.Dutch": (1, [])}


def test_elastic_needs_the_critical_path_policy(small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="resources.elastic grows running nodes by the critical-path"):
        two_roots(tmp_path, small_corpus, **{"resources.policy": "largest-first"})


# ---- the driver -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_driver_grows_a_node_when_its_sibling_is_done(ray_session, small_corpus, tmp_path):
    """German (24,000 examples) starts on 3 slots, Dutch (16,000) on 1; when German is done, Dutch pauses at
    a checkpoint and goes on from it on 4 workers, ending well before it would have on one."""
    from hql_ray.orchestration.driver import Driver
    from hql_ray.training.simulate import Simulation
    from test_driver_scale import slots_back

    cfg = two_roots(tmp_path, small_corpus, **{"run.name": "elastic"})
    spe = 5e-3  # German: 40 s on 3 workers; Dutch: 80 s on 1 (a start-up skew of up to ~30 s still grows it)
    simulation = Simulation(spe, examples_per_language=(("deu_Latn", 24000), ("nld_Latn", 16000)))
    events: list = []
    manifest = Driver(cfg, simulation=simulation, on_event=events.append).run()
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    started = {e.node: e.workers for e in events if isinstance(e, NodeStarted)}
    assert started == {"language.German": 3, "language.Dutch": 1}
    (resized,) = [e for e in events if isinstance(e, NodeResized)]
    assert (resized.node, resized.workers_before, resized.workers) == ("language.Dutch", 1, 4)
    assert resized.paused_at > 0
    dutch = manifest.nodes["language.Dutch"]
    assert dutch.resources.workers == 4 and dutch.metrics.world_size == 4
    # it slept its work once, split over 1 then 4 workers: less than the 80 s of one worker
    assert 10 < dutch.metrics.simulated_seconds < 16000 * spe - 10
    assert manifest.nodes["language.German"].resources.workers == 3
    assert slots_back(ray_session)
