"""A run survives its driver (issue 22): a real `hql-ray train` killed (-9, the whole process group: a lost head)
or stopped (SIGTERM, what schedulers and cloud preemption send) mid-node, then `--resume`: the node in flight
continues from its newest checkpoint and ends with the adapter of a run never interrupted, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.config import make_config

pytestmark = pytest.mark.slow
TWO_LANGUAGES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"
# One 60-step node (the root only), a validation every 5 steps; on CPU slots.
ROOT_ONLY = {"tree.levels": "[level0]", "resources.num_gpus": 0, "resources.cpus_per_worker": 1,
             "train.epochs": 2, "train.batch_size": 2, "train.max_steps": 60, "train.eval_every": 5,
             "train.log_every": 5, "eval.generate": "false", "resources.max_failures": 0}


def start(overrides: list[str], log: Path) -> subprocess.Popen:
    """`hql-ray train --plain` in its own session (its own local Ray), as a user or a scheduler starts it; its
    output goes to `log`."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "hql_ray", "train", "--plain", *overrides], cwd=REPO,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def wait_for(proc: subprocess.Popen, log: Path, ready, timeout_s: float = 900) -> None:
    """Until `ready()` (a bound, not a timing: a busy 2-core machine needs minutes to start Ray)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    if proc.poll() is not None or not ready():
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        pytest.fail(f"never ready (exit {proc.poll()}): {log.read_text()[-3000:]}")


def checkpoints(storage: Path, pattern: str) -> list[Path]:
    return [p for p in storage.glob(pattern) if p.is_dir()] if storage.exists() else []


def uninterrupted(tmp_path, small_corpus, tree, settings: dict):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "quiet", **settings}))
    return Driver(cfg).run().nodes["level0.Germanic"]


def test_a_lost_driver_and_head_cost_only_the_steps_since_the_last_checkpoint(ray_session, small_corpus, tmp_path):
    """kill -9 the driver's whole process group (its local Ray too, as a lost head) once the root, trained on 2
    workers by Ray Train, has checkpoints; `--resume` continues the same Ray Train run from the newest."""
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {**ROOT_ONLY, "resources.min_examples_per_worker": 1, "train.checkpoint_every": 5}
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "lost", **settings})
    log = tmp_path / "lost.log"
    proc = start(overrides, log)
    storage = tmp_path / "lost" / "storage"
    # The controller registers a checkpoint once uploaded: with two on disk, the first is registered.
    wait_for(proc, log, lambda: len(checkpoints(storage, "level0.Germanic.train.*/checkpoint_*")) >= 2)
    os.killpg(proc.pid, signal.SIGKILL)  # no word from the driver, no clean-up
    proc.wait(timeout=60)
    before = json.loads((tmp_path / "lost" / "manifest.json").read_text())
    assert before["status"] == "running" and before["nodes"]["level0.Germanic"]["status"] == "running"

    after = Driver(make_config(overrides=overrides + ["run.resume=true"])).run()
    root = after.nodes["level0.Germanic"]
    assert root.status == "done" and root.metrics.steps == 60
    assert root.metrics.resumed_from_step >= 5 and root.metrics.resumed_from_step % 5 == 0
    assert [h.step for h in root.history if h.val_loss is not None] == list(range(0, 61, 5))  # each once
    assert root.checksum == uninterrupted(tmp_path, small_corpus, tree, settings).checksum  # bit for bit


@pytest.mark.ondemand  # 7 min on 2 cores; SIGTERM's exit 143 and checkpoint are also the mid-search test's
def test_sigterm_checkpoints_the_nodes_in_flight_and_exits_143(ray_session, small_corpus, tmp_path):
    """SIGTERM to the driver alone (a warm worker trains the root: no periodic checkpoint before step 1000):
    the node writes a checkpoint at its next log step, the run is marked interrupted, the command says how to
    resume and exits 143 without a native stack dump; `--resume` continues from that checkpoint."""
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {**ROOT_ONLY, "resources.min_examples_per_worker": 1000, "train.epochs": 100, "train.max_steps": 3000,
                "train.checkpoint_every": 10000, "train.eval_every": 10000, "resources.stop_checkpoint_wait_s": 60}
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "term", **settings})
    log = tmp_path / "term.log"
    proc = start(overrides, log)
    manifest = tmp_path / "term" / "manifest.json"
    wait_for(proc, log, lambda: "level0.Germanic: step" in log.read_text())  # its first progress line: it trains
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)  # the driver alone, as `kill` or a scheduler sends it
    proc.wait(timeout=120)
    took, output = time.time() - signalled, log.read_text()
    assert proc.returncode == 143, output
    assert took < 60 + 30, took  # the configured wait, and the exit
    assert "SIGTERM received" not in output and "PC: @" not in output  # no native fault-handler dump
    assert "stopped by SIGTERM" in output and "--resume" in output
    assert "checkpoint written at step" in output
    assert json.loads(manifest.read_text())["status"] == "interrupted"

    after = Driver(make_config(overrides=overrides + ["run.resume=true"])).run()
    root = after.nodes["level0.Germanic"]
    assert root.status == "done" and 5 <= root.metrics.resumed_from_step < 3000  # the checkpoint of the stop
    assert root.metrics.resumed_from_step % 5 == 0  # written at a log step
    assert root.checksum == uninterrupted(tmp_path, small_corpus, tree, settings).checksum


def test_sigterm_during_a_search_checkpoints_its_trials(ray_session, small_corpus, tmp_path):
    """The same stop while a searched level trains (a Tune trial's Ray Train run): exit 143, and `--resume`
    restores the search, whose trial continues from the checkpoint written at the signal."""
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    settings = {**ROOT_ONLY, "resources.num_gpus": 2, "resources.min_examples_per_worker": 1000,
                "train.epochs": 100, "train.max_steps": 3000, "train.checkpoint_every": 10000,
                "train.eval_every": 10000, "resources.stop_checkpoint_wait_s": 60,
                "tune": "{level0: {num_samples: 1, lora_r: 2, scheduler: {type: fifo}}}"}
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "search", **settings})
    log = tmp_path / "search.log"
    proc = start(overrides, log)
    wait_for(proc, log, lambda: "level0.Germanic: step" in log.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output = log.read_text()
    assert proc.returncode == 143 and "SIGTERM received" not in output, output[-3000:]
    assert "level0.Germanic: checkpoint written at step" in output

    after = Driver(make_config(overrides=overrides + ["run.resume=true"])).run()
    root = after.nodes["level0.Germanic"]
    assert root.status == "done" and len(root.trials) == 1 and root.trials[0].status == "done"
    assert 5 <= root.metrics.resumed_from_step < 3000  # the trial's run went on from the stop's checkpoint
