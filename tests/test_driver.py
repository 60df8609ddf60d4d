"""The hierarchy end to end on local Ray with logical GPU slots: scheduling, hand-off, export, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from hql_ray.training import modeling
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.training.node import build_model
from hql_ray.settings.records import NodeSkipped, NodeStarted
from hql_ray.training.adapter_files import load_adapter_state


@pytest.fixture(scope="module")
def finished_run(ray_session, small_corpus, four_language_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = make_config(overrides=tiny_overrides(out, small_corpus, four_language_tree, **{
        "run.name": "four", "resources.num_gpus": 4}))
    events = []
    manifest = Driver(cfg, on_event=events.append).run()
    return cfg, manifest, events, out / "four"


def test_every_node_done_and_leaves_exported(finished_run):
    cfg, manifest, events, run_dir = finished_run
    nodes = manifest.nodes
    assert len(nodes) == 7
    assert {v.status for v in nodes.values()} == {"done"}
    assert manifest.data["status"] == "done"
    for code in ("deu_Latn", "nld_Latn", "ita_Latn", "spa_Latn"):
        assert (run_dir / "final" / code / "adapter_model.safetensors").is_file()
        assert json.loads((run_dir / "final" / code / "adapter_config.json").read_text())["peft_type"] == "LORA"
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["nodes"]["language.German"]["status"] == "done"
    for entry in nodes.values():
        assert entry.attempts == 1
        assert entry.finished_at > entry.started_at
        assert entry.metrics.val_loss < entry.metrics.initial_val_loss
    results = (run_dir / "results.md").read_text()
    assert "| deu_Latn | German | flores | language.German |" in results
    assert (run_dir / "results.csv").read_text().count("\n") == 5


def test_siblings_overlap_on_distinct_gpu_slots(finished_run):
    _, manifest, _, _ = finished_run
    g, r = manifest.nodes["level1.Germanic"], manifest.nodes["level1.Romance"]
    assert g.started_at < r.finished_at and r.started_at < g.finished_at  # ran at the same time
    assert g.resources.gpu_ids and r.resources.gpu_ids
    assert not set(g.resources.gpu_ids) & set(r.resources.gpu_ids)
    # The root had the cluster to itself: it used 2 data-parallel workers (96 examples / 48 per worker).
    root = manifest.nodes["level0.Indo_European"]
    assert root.resources.workers == 2 and len(root.resources.gpu_ids) == 2


def test_children_start_after_parent_and_receive_its_adapter(finished_run):
    _, manifest, _, _ = finished_run
    nodes = manifest.nodes
    for node_id, entry in nodes.items():
        parent = entry.parent
        if parent is None:
            assert entry.received_checksums == []
            continue
        assert entry.started_at >= nodes[parent].finished_at
        # stack mode: the child received every ancestor's adapter, byte for byte, via the object store.
        chain = []
        p = parent
        while p:
            chain.insert(0, p)
            p = nodes[p].parent
        assert entry.handed_from == chain
        assert entry.received_checksums == [nodes[a].checksum for a in chain]


def test_exported_adapter_reproduces_the_stacked_model(finished_run):
    from peft import PeftModel

    cfg, manifest, _, run_dir = finished_run
    chain = [load_adapter_state(run_dir / manifest.nodes[n].adapter)
             for n in ("level0.Indo_European", "level1.Germanic", "language.German")]
    device = torch.device("cpu")
    # In-run model of the leaf: every node's adapter stacked (the fresh top adapter adds zero).
    stacked = build_model(cfg.with_absolute_paths(), chain, device).eval()
    base_dir = modeling.resolve_base_model("tiny", Path(cfg.data.cache_dir) / "models")
    exported = PeftModel.from_pretrained(modeling.load_base_model(base_dir, "qlora", device),
                                         str(run_dir / "final" / "deu_Latn")).eval()
    tok = modeling.load_tokenizer("tiny")
    batch = tok(["Translate to German: (b / boy)", "Translate to German: (c / cat :mod (w / white))"],
                return_tensors="pt", padding=True)
    labels = tok(["Der Junge.", "Die weisse Katze."], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        a = stacked(**batch, labels=labels).logits
        b = exported(**batch, labels=labels).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_leaf_metrics_and_generation(finished_run):
    _, manifest, _, _ = finished_run
    leaf = manifest.nodes["language.Spanish"].metrics
    scores = leaf.languages["spa_Latn"]
    assert set(scores) == {"flores"}  # amr3 test is scored only when eval.test_sets lists it
    assert scores["flores"].n == 2
    assert 0.0 <= scores["flores"].chrf <= 100.0
    assert not manifest.nodes["level1.Romance"].metrics.languages  # eval.at_nodes=leaves


def test_existing_run_needs_resume(finished_run):
    from hql_ray.settings.errors import ConfigError

    cfg, _, _, _ = finished_run
    with pytest.raises(ConfigError, match="--resume"):
        Driver(cfg).run()


def _default_sigint() -> None:
    """Ctrl-C must reach the child even when pytest itself runs as a background job (`cmd &` in a
    script starts it with SIGINT ignored, which Python and its children then inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_resume_after_interrupt_retrains_nothing_finished(ray_session, small_corpus, tmp_path):
    """Ctrl-C a real `hql-ray train` mid-run, then --resume: finished nodes are kept, the rest trained."""
    tree = tmp_path / "two.csv"
    tree.write_text("code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n")
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{
        "run.name": "cut", "tree.levels": "[level0, language]", "resources.num_gpus": 0,
        "resources.cpus_per_worker": 1, "eval.generate": "false"})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "hql_ray", "train", "--plain", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    manifest_path = tmp_path / "cut" / "manifest.json"
    deadline = time.time() + 300
    done_before = []
    while time.time() < deadline and proc.poll() is None:
        if manifest_path.exists():
            nodes = json.loads(manifest_path.read_text())["nodes"]
            done_before = [n for n, v in nodes.items() if v["status"] == "done"]
            if done_before:
                break
        time.sleep(0.2)
    assert done_before == ["level0.Germanic"], proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output
    before = json.loads(manifest_path.read_text())
    assert before["status"] == "interrupted"
    finished = {n: v for n, v in before["nodes"].items() if v["status"] == "done"}
    assert list(finished) == ["level0.Germanic"]

    events = []
    cfg = make_config(overrides=overrides + ["run.resume=true"])
    after = Driver(cfg, on_event=events.append).run()
    assert {v.status for v in after.nodes.values()} == {"done"}
    skipped = {e.node for e in events if isinstance(e, NodeSkipped)}
    started = {e.node for e in events if isinstance(e, NodeStarted)}
    assert skipped == set(finished)
    assert started == set(after.nodes) - set(finished)
    for node_id, old in finished.items():
        assert after.nodes[node_id].started_at == old["started_at"]  # untouched
        assert after.nodes[node_id].checksum == old["checksum"]
