"""A training worker killed in the middle of a 1-epoch node: Ray Train restarts it from the node's last
checkpoint, the run board counts the restart as a second attempt, the node ends with the adapter an
uninterrupted run makes, only the last checkpoints are kept, and the node's children run on its adapter."""

from __future__ import annotations

import pytest

import time

import psutil

from conftest import driver_in_thread, kill_when, tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver

TWO_LANGUAGES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_worker_killed_mid_node_is_retried_from_its_checkpoint(ray_session, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {
        "tree.levels": "[level0, language]", "resources.num_gpus": 4,
        "resources.max_failures": 2, "resources.min_examples_per_worker": 1000,  # one worker per node
        # One epoch of 64 one-example steps (the paper's hierarchical nodes train one epoch each).
        "train.epochs": 1, "train.batch_size": 1, "train.max_steps": 60, "train.eval_every": 5,
        "train.checkpoints_kept": 2, "eval.generate": "false"}
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "ft", **settings}))
    events: list[tuple[str, dict]] = []
    driver, outcome = driver_in_thread(cfg, on_event=events.append)
    storage = tmp_path / "ft" / "storage"
    # The root has reported checkpoints (they land in storage/<launch name>/checkpoint_*; the controller
    # registers one after its upload, so wait for the second to be sure of the first): kill its worker.
    victim = kill_when(driver, lambda: len(list(storage.glob("level0.Germanic.train.*/checkpoint_*"))) >= 2,
                       "ray::RayTrainWorker")
    assert victim is not None, f"no checkpoint or worker seen; events: {events}"
    killed_at = time.time()
    driver.join(timeout=600)
    assert not driver.is_alive() and "error" not in outcome, outcome
    manifest = outcome["manifest"]
    nodes = manifest.nodes

    root = nodes["level0.Germanic"]
    assert root.status == "done", root.error
    assert root.started_at < killed_at < root.finished_at
    assert root.attempts == 2  # rank 0 started twice: the first group and its replacement
    assert root.metrics.resumed_from_step >= 5  # resumed from a checkpoint, not from scratch
    assert root.metrics.resumed_from_step % 5 == 0 and root.metrics.steps == 60
    validations = [h.step for h in root.history if h.val_loss is not None]
    assert validations == list(range(0, 61, 5))  # every validation once: restored up to the checkpoint, then new
    for leaf_id in ("language.German", "language.Dutch"):
        leaf = nodes[leaf_id]
        assert leaf.status == "done" and leaf.attempts == 1
        assert leaf.started_at >= root.finished_at
        assert leaf.received_checksums == [root.checksum]
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE
    # Ray Train kept only the latest checkpoints of the root (13 were reported).
    kept = [p for p in storage.glob("level0.Germanic.train.*/checkpoint_*") if p.is_dir()]
    assert 1 <= len(kept) <= 2

    # The same node never interrupted ends with the same adapter, bit for bit: the checkpoint holds the
    # optimizer, the schedule and the RNG state, and each epoch's batch order comes from its seed.
    quiet = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{
        "run.name": "ft_quiet", "tree.levels": "[level0]", **{k: v for k, v in settings.items()
                                                            if k != "tree.levels"}}))
    unkilled = Driver(quiet).run().nodes["level0.Germanic"]
    assert unkilled.status == "done" and unkilled.metrics.resumed_from_step is None
    assert unkilled.checksum == root.checksum
