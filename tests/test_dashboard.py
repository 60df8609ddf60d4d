"""The Ray dashboard and logs (issue 13): Ray Train's state tracking records each node's run (what the
dashboard's Train view lists), and -v decides whether the workers' logs reach the driver's output."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from conftest import tiny_overrides
from hql_ray.orchestration import cluster
from hql_ray.orchestration.cluster import STATE_TRACKING, init_ray, ray_settings, wants_verbose
from hql_ray.settings.config import make_config

TREE = "code,level0,language\ndeu_Latn,Top,German\nnld_Latn,Top,Dutch\n"


@pytest.fixture()
def clean_env():
    """init_ray sets environment defaults for this process: put the environment back afterwards."""
    keys = (STATE_TRACKING, "RAY_TRAIN_METRICS_ENABLED", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def cfg_with(*overrides):
    return make_config(overrides=list(overrides))


def test_local_ray_without_verbose_has_no_dashboard_and_keeps_worker_logs_out():
    kwargs, env = ray_settings(cfg_with(), verbose=False)
    assert kwargs["include_dashboard"] is False and kwargs["log_to_driver"] is False
    assert STATE_TRACKING not in env and env["RAY_TRAIN_METRICS_ENABLED"] == "0"


def test_local_ray_with_verbose_starts_the_dashboard_with_train_runs_and_shows_worker_logs():
    kwargs, env = ray_settings(cfg_with(), verbose=True)
    assert kwargs["include_dashboard"] is True and kwargs["log_to_driver"] is True
    assert env[STATE_TRACKING] == "1" and "RAY_TRAIN_METRICS_ENABLED" not in env


@pytest.mark.parametrize("verbose", [False, True])
def test_a_cluster_always_tracks_train_runs_and_logs_follow_verbose(verbose):
    kwargs, env = ray_settings(cfg_with("resources.address=auto"), verbose=verbose)
    assert kwargs == {"address": "auto", "log_to_driver": verbose,
                      "logging_level": logging.INFO if verbose else logging.WARNING}  # Ray's INFO lines: -v only
    assert env[STATE_TRACKING] == "1"


def test_verbose_defaults_to_the_root_logger_that_train_dash_v_sets():
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)  # what `hql-ray train -v` does (logging.basicConfig(level=INFO))
        assert wants_verbose() is True and wants_verbose(False) is False
        root.setLevel(logging.WARNING)
        assert wants_verbose() is False and wants_verbose(True) is True
    finally:
        root.setLevel(level)


def test_init_ray_sets_the_environment_before_starting_ray_and_prints_the_dashboard(monkeypatch, clean_env, capsys):
    calls = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)

    def fake_init(**kwargs):
        calls.append((kwargs, os.environ.get(STATE_TRACKING)))
        return SimpleNamespace(dashboard_url="127.0.0.1:8265")

    monkeypatch.setattr(cluster.ray, "init", fake_init)
    assert init_ray(cfg_with(), verbose=True) is True
    assert calls[0][0]["include_dashboard"] is True and calls[0][1] == "1"  # set before ray.init and fit()
    assert "Ray dashboard http://127.0.0.1:8265" in capsys.readouterr().err

    os.environ[STATE_TRACKING] = "0"  # the user's own setting wins
    init_ray(cfg_with("resources.address=auto"), verbose=False)
    assert os.environ[STATE_TRACKING] == "0" and calls[1][0]["log_to_driver"] is False


@pytest.mark.slow  # one simulated 3-node run on the shared Ray (~30 s on 2 cores)
def test_each_nodes_run_is_recorded_in_ray_train_state(ray_session, small_corpus, tmp_path, monkeypatch):
    """What the dashboard's Train view shows (`/api/train/v2/runs/v1` reads the same state actor)."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    from hql_ray.orchestration.driver import Driver
    from hql_ray.training.simulate import Simulation

    # init_ray would set it on a cluster or with -v; the shared test Ray is already up, so set it here.
    monkeypatch.setenv(STATE_TRACKING, "1")
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    cfg = make_config(overrides=tiny_overrides(tmp_path / "runs", small_corpus, tree, **{
        "run.name": "dash", "tree.levels": "[level0, language]", "resources.num_gpus": 0}))
    manifest = Driver(cfg, simulation=Simulation(0.0)).run()
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    actor = get_state_actor()
    assert actor is not None, "no Ray Train state actor: state tracking did not start"
    runs = ray.get(actor.get_train_runs.remote(), timeout=60)
    by_node = {node: [run.status.value for run in runs.values() if run.name.startswith(f"{node}.")]
               for node in manifest.nodes}
    assert all(by_node.values()), by_node
    assert all("FINISHED" in statuses for statuses in by_node.values()), by_node


def test_a_tune_trials_fit_gets_the_drivers_ray_train_settings(monkeypatch, clean_env):
    """A trial calls fit() in its own actor (on a cluster, without the driver's environment): the job carries
    the driver's RAY_TRAIN_* settings there, so its run is tracked for the dashboard too."""
    from hql_ray.orchestration.job import NodeJob
    from hql_ray.orchestration.launch import make_trainer
    from hql_ray.orchestration.run_model import Slots
    from hql_ray.settings.records import NodeSpec

    monkeypatch.setenv(STATE_TRACKING, "1")
    job = NodeJob(cfg=make_config(), node=NodeSpec("level0.Top", "Top", "level0", 0, None, True, (("deu_Latn", "German"),), 1),
                  workers=1, parent_refs=[], name="level0.Top.launch1.0", slots=Slots(1, False, False, 1.0),
                  storage="/tmp/unused", board=None)
    assert job.train_env[STATE_TRACKING] == "1"
    monkeypatch.delenv(STATE_TRACKING)  # the trial actor's process
    make_trainer(job)
    assert os.environ[STATE_TRACKING] == "1"
