"""Warm workers (resources.executor): single-worker nodes on long-lived actors give the same adapters as
their own Ray Train runs, resume from their checkpoint when killed, and are only used where they fit."""

from __future__ import annotations

import time

import psutil
import pytest
import ray

from conftest import driver_in_thread, kill_when, ray_processes_of_this_process, tiny_overrides, unreleased_resources
from hql_ray.orchestration import warm
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.errors import ConfigError
from hql_ray.orchestration.run_model import Slots
from hql_ray.settings.records import NodeStarted

CPU_SLOTS = {"resources.num_gpus": 0, "resources.num_cpu_slots": 2}
TWO_LANGUAGES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"


def test_executor_is_checked_and_chosen_where_warm_workers_fit(ray_session):
    with pytest.raises(ConfigError, match="resources.executor must be one of auto, warm, ray-train"):
        make_config(overrides=["resources.executor=fast"])
    cpu, gpu = Slots(2, False, False, 1.0), Slots(4, True, False, 1.0)
    assert warm.wanted("auto", cpu, "/tmp/storage")  # the laptop: CPU slots, one machine, local storage
    assert not warm.wanted("ray-train", cpu, "/tmp/storage")
    assert not warm.wanted("auto", gpu, "/tmp/storage")  # a GPU is held by the run that uses it
    assert not warm.wanted("auto", cpu, "s3://bucket/runs")  # a cluster's shared storage
    with pytest.raises(ConfigError, match="CPU slots of a one-machine Ray"):
        warm.wanted("warm", gpu, "/tmp/storage")


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_warm_workers_give_the_adapters_of_ray_train_runs(ray_session, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    runs = {}
    for executor in ("warm", "ray-train"):
        cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{
            "run.name": executor, "resources.executor": executor, "tree.levels": "[level0, language]",
            "resources.min_examples_per_worker": 24, **CPU_SLOTS}))
        events = []
        runs[executor] = (Driver(cfg, on_event=events.append).run(), events)

    warm_nodes, ray_nodes = runs["warm"][0].nodes, runs["ray-train"][0].nodes
    assert {v.status for v in warm_nodes.values()} == {"done"} == {v.status for v in ray_nodes.values()}
    # The root trains on both slots: a Ray Train run either way; every other node gets one worker.
    assert warm_nodes["level0.Germanic"].resources.workers == 2
    assert warm_nodes["level0.Germanic"].resources.executor == "ray-train"
    single = [n for n in warm_nodes if n != "level0.Germanic"]
    assert {warm_nodes[n].resources.executor for n in single} == {"warm"}
    assert {ray_nodes[n].resources.executor for n in single} == {"ray-train"}
    started = [e for e in runs["warm"][1] if isinstance(e, NodeStarted)]
    assert {e.executor for e in started} == {"warm", "ray-train"}
    # Same seeds, same data order, one thread each: bit for bit the same adapters, scores and hand-offs.
    for node_id, entry in warm_nodes.items():
        other = ray_nodes[node_id]
        assert entry.checksum == other.checksum, node_id
        assert entry.received_checksums == other.received_checksums, node_id
        assert entry.metrics.val_loss == other.metrics.val_loss, node_id
        assert entry.attempts == 1
    leaf = warm_nodes["language.German"]
    assert leaf.metrics.languages == ray_nodes["language.German"].metrics.languages
    assert leaf.exported == ["deu_Latn"]
    # The run ends its warm workers and frees everything.
    deadline = time.time() + 30
    while ray_processes_of_this_process("ray::NodeWorker") and time.time() < deadline:
        time.sleep(0.5)
    assert not ray_processes_of_this_process("ray::NodeWorker")
    assert unreleased_resources() == {}


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_killed_warm_worker_is_replaced_and_resumes_from_its_checkpoint(ray_session, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {
        "tree.levels": "[level0, language]", **CPU_SLOTS, "resources.executor": "warm",
        "resources.max_failures": 2, "resources.min_examples_per_worker": 1000,  # one worker per node
        "train.epochs": 1, "train.batch_size": 1, "train.max_steps": 60, "train.eval_every": 5,
        "eval.generate": "false"}
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "kill", **settings}))
    driver, outcome = driver_in_thread(cfg)
    storage = tmp_path / "kill" / "storage"
    victim = kill_when(driver, lambda: bool(list(storage.glob("level0.Germanic.train.*/latest/state.json"))),
                       "ray::NodeWorker")  # once there is a checkpoint to resume from
    assert victim is not None, "no checkpoint or warm worker seen"
    killed_at = time.time()
    driver.join(timeout=600)
    assert not driver.is_alive() and "error" not in outcome, outcome
    nodes = outcome["manifest"].nodes
    root = nodes["level0.Germanic"]
    assert root.status == "done", root.error
    assert root.resources.executor == "warm"
    assert root.started_at < killed_at < root.finished_at
    assert root.attempts == 2  # the killed worker and its replacement
    assert root.metrics.resumed_from_step >= 5 and root.metrics.resumed_from_step % 5 == 0
    assert [h.step for h in root.history if h.val_loss is not None] == list(range(0, 61, 5))
    for leaf_id in ("language.German", "language.Dutch"):
        assert nodes[leaf_id].status == "done" and nodes[leaf_id].received_checksums == [root.checksum]
    assert not psutil.pid_exists(victim.pid) or psutil.Process(victim.pid).status() == psutil.STATUS_ZOMBIE

    # Never interrupted (and on Ray Train): the same adapter, bit for bit.
    quiet = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{
        **settings, "run.name": "quiet", "tree.levels": "[level0]", "resources.executor": "ray-train"}))
    unkilled = Driver(quiet).run().nodes["level0.Germanic"]
    assert unkilled.metrics.resumed_from_step is None
    assert unkilled.checksum == root.checksum
    assert ray.is_initialized()
