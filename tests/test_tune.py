"""Per-level Ray Tune search: the `tune:` section, every trial recorded, ASHA stopping a bad trial,
children stacking on whatever rank the search picked, and a search cut by a dead driver redone on --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides, unreleased_resources
from hql_ray.settings import search_space
from hql_ray.orchestration import tune
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.errors import ConfigError
from hql_ray.orchestration.board import Attempt
from hql_ray.settings.records import HistoryPoint, NodeDone, NodeMetrics, NodeResult, Progress, TrialChoice
from hql_ray.training.adapter_files import load_adapter_state, state_checksum

TWO_LANGUAGES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"
# The root tries lr 1e-2 then 1e-7 (a grid, one at a time): ASHA must stop the second after its first
# validation, as it is worse than the first trial was there. The leaves are not searched (r = 4).
ROOT_SEARCH = ("{level0: {num_samples: 1, lora_r: 2, learning_rate: {grid: [1.0e-2, 1.0e-7]}, "
               "max_concurrent_trials: 1, scheduler: {type: asha, grace_period: 1, reduction_factor: 2}}, "
               "language: false}")


def search_overrides(tmp, corpus, tree, **extra) -> list[str]:
    return tiny_overrides(tmp, corpus, tree, **{
        "tree.levels": "[level0, language]", "resources.num_gpus": 4, "train.eval_every": 1,
        "eval.generate": "false", "tune": ROOT_SEARCH, **extra})


# ---- the config section (no Ray) ------------------------------------------------------------------
def test_default_applies_to_every_level_and_levels_override_it():
    section = {"default": {"num_samples": 3, "lora_r": [4, 8], "learning_rate": ["1e-4", 1.0e-2],
                           "scheduler": {"grace_period": 2}},
               "level1": {"lora_r": {"grid": [16, 32]}, "scheduler": {"reduction_factor": 3}},
               "language": False}
    specs = search_space.parse_tune(section, ["level0", "level1", "language"])
    d = specs["default"]
    assert d.num_samples == 3 and d.lora_r.kind == "choice" and d.lora_r.values == [4, 8]
    assert d.learning_rate.kind == "loguniform" and d.learning_rate.values == [1e-4, 1e-2]  # "1e-4": YAML string
    assert (d.metric, d.mode, d.scheduler, d.grace_period, d.reduction_factor) == ("val_loss", "min", "asha", 2, 2)
    l1 = specs["level1"]
    assert l1.num_samples == 3 and l1.lora_r.kind == "grid" and l1.lora_r.values == [16, 32]
    assert (l1.grace_period, l1.reduction_factor) == (2, 3)  # scheduler settings merged key by key
    assert specs["language"] is None

    cfg = make_config(overrides=["tune={default: {num_samples: 2}, language: false}", "model.lora.r=8",
                                 "train.learning_rate=3e-3"])
    assert search_space.searches_level(cfg, "level0") and search_space.searches_level(cfg, "level2")
    assert not search_space.searches_level(cfg, "language")
    assert not search_space.searches_level(make_config(), "level0")  # no tune section: nothing searched
    space = tune.param_space(cfg, search_space.level_spec(cfg, "level0"))
    assert space == {"lora_r": 8, "lora_alpha": "r", "learning_rate": 3e-3}  # unset = the run's values


def test_trial_values_land_in_the_node_config():
    cfg = make_config()
    choice = search_space.trial_choice({"lora_r": 16, "lora_alpha": "r", "learning_rate": 2e-4})
    assert choice == TrialChoice(16, 16, 2e-4)
    out = search_space.trial_config(cfg, choice)
    assert out.model.lora.r == 16 and out.model.lora.alpha == 16 and out.train.learning_rate == 2e-4
    assert cfg.model.lora.r == 256  # the run's config is untouched
    assert search_space.trial_choice({"lora_r": 16, "lora_alpha": 32, "learning_rate": 1e-3}).lora_alpha == 32


@pytest.mark.parametrize("section, message", [
    ({"default": {"num_sample": 2}}, "unknown key 'tune.default.num_sample'"),
    ({"default": {"learning_rate": [1e-2, 1e-4]}}, "tune.default.learning_rate: a log-uniform range"),
    ({"default": {"lora_r": [4, 0]}}, "tune.default.lora_r values must be > 0"),
    ({"default": {"lora_r": [4.5]}}, "tune.default.lora_r must be an integer"),
    ({"default": {"scheduler": {"type": "pbt"}}}, "scheduler.type must be asha or fifo"),
    ({"default": {"metric": "bleu"}}, "tune.default.metric must be one of val_loss, got 'bleu'"),
    ({"level9": {"num_samples": 2}}, "tune.level9: no level 'level9' in this run"),
    ({"level0": 3}, "tune.level0 must be a mapping"),
])
def test_bad_tune_sections_are_named(section, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        search_space.parse_tune(section, ["level0", "language"])


def test_driver_checks_the_tune_section_before_ray(tmp_path, small_corpus):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    cfg = make_config(overrides=search_overrides(tmp_path, small_corpus, tree, tune="{level1: {num_samples: 2}}"))
    with pytest.raises(ConfigError, match="no level 'level1' in this run; its levels are level0, language"):
        Driver(cfg)


def test_demo_config_searches_every_level_with_two_trials():
    cfg = make_config(REPO / "configs" / "tune_demo.yaml")
    specs = search_space.parse_tune(cfg.tune, cfg.tree.levels)
    for level in cfg.tree.levels:
        spec = search_space.level_spec(cfg, level)
        assert spec is not None and spec.num_samples == 2 and spec.scheduler == "asha", level
    assert specs["default"].lora_r.values and specs["default"].learning_rate.kind == "loguniform"


# ---- a searched run on local Ray --------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched_run(ray_session, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    tree = out / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    cfg = make_config(overrides=search_overrides(out, small_corpus, tree, **{"run.name": "searched"}))
    t0 = time.time()
    manifest = Driver(cfg).run()
    print(f"searched run: {time.time() - t0:.1f} s")
    assert unreleased_resources() == {}  # on logical GPU slots: the stopped trial's GPU came back
    return cfg, manifest, out / "searched"


def test_every_trial_is_recorded_and_the_best_kept(searched_run):
    _, manifest, run_dir = searched_run
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    root = manifest.nodes["level0.Germanic"]
    trials = root.trials
    assert len(trials) == 2 and len({t.trial_id for t in trials}) == 2
    by_lr = {t.config.learning_rate: t for t in trials}
    good, bad = by_lr[1e-2], by_lr[1e-7]
    assert good.config == TrialChoice(2, 2, 1e-2)
    assert good.status == "done" and good.best and good.metric == "val_loss"
    assert good.value == root.metrics.val_loss  # the node's result is the best trial's
    assert root.metrics.trial == TrialChoice(2, 2, 1e-2, good.trial_id)
    for t in trials:
        assert t.started_at <= t.finished_at and t.time >= 0 and t.starts == 1
        assert t.run == f"{t.run.split('.trial_')[0]}.trial_{t.trial_id}"
        assert (run_dir / "storage" / t.run).is_dir()  # each trial: its own Ray Train run, own name
    assert len({t.run for t in trials}) == 2
    # The node's adapter is the chosen trial's (rank 2), moved from its trial's folder by the keeper and
    # checksummed like any node's; the other trial's result stays beside it.
    saved = load_adapter_state(run_dir / root.adapter)
    assert saved.config["r"] == 2 and state_checksum(saved) == root.checksum
    assert (run_dir / "nodes" / "level0.Germanic" / "trials" / good.trial_id / "result.json").is_file()
    assert not (run_dir / "nodes" / "level0.Germanic" / "trials" / good.trial_id / "adapter").exists()


def test_asha_stopped_the_bad_trial_early(searched_run):
    _, manifest, _ = searched_run
    trials = {t.config.learning_rate: t for t in manifest.nodes["level0.Germanic"].trials}
    good, bad = trials[1e-2], trials[1e-7]
    # 4 steps, a validation after each, each reported (the 4th with the last step's checkpoint).
    assert good.validations == 4
    assert bad.status == "stopped" and bad.validations == 1 and not bad.best
    assert bad.value > good.value


def test_children_stack_on_the_rank_the_search_chose(searched_run):
    _, manifest, run_dir = searched_run
    root = manifest.nodes["level0.Germanic"]
    assert root.attempts == 1  # trials are not attempts: one search, no restart
    for leaf_id, code in (("language.German", "deu_Latn"), ("language.Dutch", "nld_Latn")):
        leaf = manifest.nodes[leaf_id]
        assert leaf.trials is None  # `language: false`: a plain node
        assert leaf.attempts == 1 and leaf.started_at >= root.finished_at
        assert leaf.received_checksums == [root.checksum]
        exported = json.loads((run_dir / "final" / code / "adapter_config.json").read_text())
        assert exported["r"] == 2 + 4  # the root's searched rank 2 stacked under the leaf's rank 4


THREE_TRIALS = ("{level0: {num_samples: 1, lora_r: 2, learning_rate: {grid: [1.0e-2, 3.0e-3, 1.0e-3]}, "
                "max_concurrent_trials: 1, scheduler: {type: fifo}}}")


@pytest.mark.slow
def test_a_search_cut_by_a_dead_driver_resumes_and_picks_the_same_trial(ray_session, small_corpus, tmp_path):
    """SIGKILL a real `hql-ray train` (its whole process group: a lost head) once the root's first trial has
    finished, then --resume: the search continues (Tuner.restore), the finished trial is not run again, and
    the trial chosen is the one an uninterrupted search chooses from the same results."""
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {"tree.levels": "[level0]", "tune": THREE_TRIALS, "train.max_steps": 6}
    overrides = search_overrides(tmp_path, small_corpus, tree, **{"run.name": "cut", **settings})
    proc = subprocess.Popen([sys.executable, "-m", "hql_ray", "train", "--plain", *overrides], cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    trials = tmp_path / "cut" / "nodes" / "level0.Germanic" / "trials"
    deadline = time.time() + 900  # a bound, not a timing: a busy 2-core machine needs minutes to start Ray and Tune
    finished: list[Path] = []
    try:
        while time.time() < deadline and proc.poll() is None and not finished:
            finished = list(trials.glob("*/result.json")) if trials.exists() else []
            time.sleep(0.2)
        assert finished, "no trial finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver dies without a word
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, output
    done_before = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in trials.glob("*/result.json")}

    after = Driver(make_config(overrides=overrides + ["run.resume=true"])).run()
    root = after.nodes["level0.Germanic"]
    assert root.status == "done" and len(root.trials) == 3 and {t.status for t in root.trials} == {"done"}, \
        (root.error, root.trials)
    for trial_id, (mtime, text) in done_before.items():  # finished before the kill: not run again
        result = trials / trial_id / "result.json"
        assert (result.stat().st_mtime_ns, result.read_text()) == (mtime, text)
    quiet = Driver(make_config(overrides=search_overrides(tmp_path, small_corpus, tree,
                                                          **{"run.name": "quiet", **settings}))).run()
    chosen = quiet.nodes["level0.Germanic"].metrics.trial
    assert (root.metrics.trial.lora_r, root.metrics.trial.learning_rate) == (chosen.lora_r, chosen.learning_rate)
    assert root.metrics.val_loss == quiet.nodes["level0.Germanic"].metrics.val_loss


def test_search_state_counts_restarts_not_trials_and_keeps_only_the_best(ray_session, tmp_path):
    """What a trial's workers report goes through TrialBoard: the run board hears the node's first start and
    each restart (so `attempts` = 1 + restarts, however many trials), and progress tagged with the trial.
    Two searched nodes share the run's one Searches actor, each with its own trials."""
    import ray

    from hql_ray.orchestration import search_state
    from hql_ray.orchestration.board import RunBoard

    board = RunBoard.options(num_cpus=0).remote()
    searches = search_state.start(board, ray.get_runtime_context().get_node_id())
    ray.get([searches.open.remote("level0.G", "val_loss", "min", str(tmp_path / "G")),
             searches.open.remote("level0.R", "val_loss", "min", str(tmp_path / "R"))])
    state, sibling = search_state.NodeSearch(searches, "level0.G"), search_state.NodeSearch(searches, "level0.R")
    a, b = tune.TrialBoard(board, state, "t_a"), tune.TrialBoard(board, state, "t_b")
    ray.get(a.started.remote("level0.G", Attempt([], 0.0)))  # the first trial starts: the node's 1st attempt
    ray.get(b.started.remote("level0.G", Attempt([], 0.0)))  # a second trial: not an attempt
    assert ray.get(board.attempts.remote("level0.G")) == 1
    ray.get(b.started.remote("level0.G", Attempt([], 0.0)))  # trial b's worker group restarted
    assert ray.get(board.attempts.remote("level0.G")) == 2
    ray.get(a.progress.remote("level0.G", Progress(step=3)))
    assert ray.get(board.snapshot.remote())["level0.G"].trial == "t_a"

    def result(loss):
        return NodeResult(None, NodeMetrics(val_loss=loss), [HistoryPoint(1, val_loss=loss)], kept_checksum=f"c{loss}")

    ray.get(state.finished("t_a", result(2.0), None))
    ray.get(state.finished("t_b", result(1.5), None))
    ray.get(state.finished("t_c", None, "RuntimeError: boom"))
    ray.get(sibling.finished("t_a", result(0.5), None))  # the same trial id in another node's search
    trials, best_id = ray.get(state.summary())
    assert best_id == "t_b" and trials["t_b"].starts == 2 and trials["t_c"].error == "RuntimeError: boom"
    assert ray.get(state.result("t_b")).metrics.val_loss == 1.5 and trials["t_a"].value == 2.0
    assert ray.get(sibling.summary())[1] == "t_a" and ray.get(sibling.result("t_a")).metrics.val_loss == 0.5
    # What a finished trial leaves in the run folder is what a resumed search reads back.
    ray.get(searches.close.remote("level0.G"))
    ray.get(searches.open.remote("level0.G", "val_loss", "min", str(tmp_path / "G")))
    again = ray.get(state.summary())
    assert again[1] == "t_b" and sorted(again[0]) == ["t_a", "t_b"] and again[0]["t_a"].value == 2.0
    assert ray.get(state.kept_report("t_b")) == {"val_loss": 1.5, "validation": 1}
    ray.kill(searches)


CHAIN = "code,level0,level1,language\ndeu_Latn,Germanic,West,German\nnld_Latn,Germanic,West,Dutch\n"


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_stopped_trials_give_their_cpu_slots_back(ray_session, small_corpus, tmp_path):
    """The README's search on CPU slots, as a laptop runs it: ASHA stops a trial of the root, then the next
    node needs both CPU slots at once. The stopped trial's Ray Train run used to keep its CPU for good and
    that node waited forever (resources.wait_timeout_s turns a regression into a failure, not a hang)."""
    tree = tmp_path / "chain.csv"
    tree.write_text(CHAIN)
    cfg = make_config(overrides=search_overrides(tmp_path, small_corpus, tree, **{
        "run.name": "cpu_slots", "tree.levels": "[level0, level1]", "resources.num_gpus": 0,
        "resources.cpus_per_worker": 1, "resources.min_examples_per_worker": 16, "resources.wait_timeout_s": 120,
        "tune": ROOT_SEARCH.replace("language: false", "level1: false")}))
    after_node = {}

    def on_event(event):
        if isinstance(event, NodeDone):  # nothing else runs in this chain: every slot must be free again
            after_node[event.node] = unreleased_resources(timeout_s=5)

    manifest = Driver(cfg, on_event=on_event).run()
    trials = manifest.nodes["level0.Germanic"].trials
    assert sorted(t.status for t in trials) == ["done", "stopped"]
    assert {v.status for v in manifest.nodes.values()} == {"done"}, manifest.nodes
    assert manifest.nodes["level1.West"].resources.workers == 2  # every CPU slot
    assert manifest.data["slots"] == {"total": 2, "gpu": False, "cuda": False}
    assert after_node == {"level0.Germanic": {}, "level1.West": {}}
    assert unreleased_resources() == {}
