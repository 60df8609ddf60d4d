"""No silent waits, and a first Ctrl-C that ends the run: a node whose resources never come is named with
what it waits for and what holds the rest, then fails; SIGINT while a node waits and while a search runs
ends `hql-ray train` within seconds, Ray shut down and the manifest marked interrupted."""

from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, tiny_overrides, unreleased_resources
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.records import NodeFailed, NodeWaiting
from test_tune import TWO_LANGUAGES, search_overrides

# Three CPU slots on a Ray with two CPUs: the root asks for 3 workers x 1 CPU, which never fit.
OVERSUBSCRIBED = {"tree.levels": "[level0]", "resources.num_gpus": 0, "resources.cpus_per_worker": 1,
                  "resources.num_cpu_slots": 3, "resources.min_examples_per_worker": 1,
                  "resources.wait_warning_s": 2, "eval.generate": "false"}


def test_a_node_that_cannot_get_its_resources_says_why_then_fails(ray_session, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{
        **OVERSUBSCRIBED, "run.name": "starved", "resources.wait_timeout_s": 20}))
    events = []
    manifest = Driver(cfg, on_event=events.append).run()
    root = manifest.nodes["level0.Germanic"]
    waits = [e for e in events if isinstance(e, NodeWaiting)]
    assert waits and waits[0].node == "level0.Germanic" and waits[0].waited >= 2
    message = waits[0].message
    assert message.startswith("level0.Germanic has waited") and "for 3 worker(s) x {CPU: 1}" in message
    assert "; free CPU " in message and "/2" in message and "; held: " in message
    assert root.status == "failed" and manifest.data["status"] == "failed"
    assert root.error.startswith("gave up waiting for resources: level0.Germanic has waited"), root.error
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert "for 3 worker(s) x {CPU: 1}" in failed[0].error
    assert unreleased_resources() == {}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # see test_driver: a background pytest ignores SIGINT


def interrupt_when(overrides: list[str], ready, out: Path, timeout_s: float = 400) -> tuple[int, float, str]:
    """Run `hql-ray train`, send ONE SIGINT once `ready(output)` holds; (exit code, seconds to exit, output)."""
    log = out / "train.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "hql_ray", "train", "--plain", *overrides], cwd=REPO,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and proc.poll() is None and not ready(log.read_text()):
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert ready(log.read_text()), "never ready:\n" + log.read_text()
        t0 = time.time()
        os.kill(proc.pid, signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches it first
        code = proc.wait(timeout=60)
        return code, time.time() - t0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_while_a_node_waits_for_resources(small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{
        **OVERSUBSCRIBED, "run.name": "waiting", "resources.wait_timeout_s": 0})  # 0: would wait forever
    code, seconds, output = interrupt_when(overrides, lambda text: "WAITING for resources" in text, tmp_path)
    assert code == 130, output
    assert seconds < 30, f"{seconds:.1f} s to exit after Ctrl-C\n{output}"
    assert "interrupted; finished nodes are kept" in output
    manifest = json.loads((tmp_path / "waiting" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_ctrl_c_while_a_search_runs(small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    overrides = search_overrides(tmp_path, small_corpus, tree, **{"run.name": "searching"})
    storage = tmp_path / "searching" / "storage"

    def trial_running(_text: str) -> bool:
        return storage.exists() and any(p.is_dir() for p in storage.glob("*.trial_*"))

    code, seconds, output = interrupt_when(overrides, trial_running, tmp_path)
    assert code == 130, output
    assert seconds < 30, f"{seconds:.1f} s to exit after Ctrl-C\n{output}"
    manifest = json.loads((tmp_path / "searching" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["nodes"]["level0.Germanic"]["status"] == "running"
