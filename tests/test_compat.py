"""A run folder written before the manifest had a `format` key (tests/fixtures/run_v1, made by the code at
dd14ddd) is still read by `hql-ray report`, `hql-ray generate` and `--resume`; resuming upgrades it. Its
scores (one per language on the union of its test splits, "bleu" = BLEU 13a) show as test set "union"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.records import NodeSkipped, NodeStarted
from hql_ray.outputs.generate import generate_sentences
from hql_ray.outputs.manifest import FORMAT, read_manifest, run_tree
from hql_ray.outputs.report import write_report

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NODES = {"level0.Germanic", "language.German", "language.Dutch"}


@pytest.fixture
def old_run(tmp_path) -> tuple[Path, Path]:
    """A copy of the old run, its config pointed at this test's folders (as anyone who moves a run does)."""
    run_dir = tmp_path / "runs" / "v1_run"
    shutil.copytree(FIXTURES / "run_v1", run_dir)
    tree = tmp_path / "tree.csv"
    shutil.copy(FIXTURES / "run_v1_tree.csv", tree)
    data = json.loads((run_dir / "manifest.json").read_text())
    assert "format" not in data and set(data["tree"]) == {"file", "levels"}  # really the old layout
    data["config"]["data"]["cache_dir"] = str(tmp_path / "runs" / ".cache")
    data["config"]["run"]["output_dir"] = str(tmp_path / "runs")
    data["tree"]["file"] = data["config"]["tree"]["file"] = str(tree)
    (run_dir / "manifest.json").write_text(json.dumps(data))
    return run_dir, tree


def test_report_reads_an_old_run(old_run):
    run_dir, _ = old_run
    manifest = read_manifest(run_dir)
    assert manifest.format == 1
    tree, note = run_tree(manifest)
    assert set(tree.nodes) == NODES and note is None  # its tree file still matches
    out = write_report([run_dir], run_dir / "report", with_plots=False)
    text = out["markdown"]
    for code, name, leaf in (("deu_Latn", "German", "language.German"), ("nld_Latn", "Dutch", "language.Dutch")):
        raw = json.loads((run_dir / "manifest.json").read_text())["nodes"][leaf]["metrics"]["languages"][code]
        chrf, bleu = raw["chrf++"], raw["bleu"]  # one dict per language, "bleu" = 13a
        assert manifest.nodes[leaf].metrics.languages[code]["union"].bleu_13a == bleu  # read as test set "union"
        # its scores show as test set "union" (the union of its test splits), its BLEU as BLEU (13a)
        assert f"| {code} | {name} | union | not computed | {bleu:.2f} | {chrf:.2f} |" in text
    assert "test set 'union': scores from an older hql-ray" in text


def test_report_without_the_tree_file_rebuilds_the_tree_from_the_old_manifest(old_run):
    run_dir, tree_file = old_run
    tree_file.unlink()
    tree, note = run_tree(read_manifest(run_dir))
    assert set(tree.nodes) == NODES and "unreadable" in note
    assert {lang.code: lang.name for lang in tree.languages} == {"deu_Latn": "German", "nld_Latn": "Dutch"}


def test_generate_reads_an_old_run(old_run):
    run_dir, _ = old_run
    out = generate_sentences(run_dir, "deu_Latn", ["(b / boy)", "(c / cat :mod (w / white))"], max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_resume_keeps_every_node_of_an_old_run_and_upgrades_its_manifest(ray_session, small_corpus, old_run, tmp_path):
    run_dir, tree = old_run
    before = read_manifest(run_dir)
    cfg = make_config(overrides=tiny_overrides(tmp_path / "runs", small_corpus, tree, **{
        "run.name": "v1_run", "run.resume": "true", "tree.levels": "[level0, language]", "model.lora.r": 2,
        "train.max_steps": 2, "resources.num_gpus": 0}))
    raw_before = json.loads((run_dir / "manifest.json").read_text())
    events = []
    after = Driver(cfg, on_event=events.append).run()
    assert {e.node for e in events if isinstance(e, NodeSkipped)} == NODES
    assert not [e for e in events if isinstance(e, NodeStarted)]  # nothing retrained
    for node_id in NODES:
        assert after.nodes[node_id].checksum == before.nodes[node_id].checksum
    upgraded = read_manifest(run_dir)
    assert upgraded.format == FORMAT and upgraded.data["status"] == "done"
    old_scores = raw_before["nodes"]["language.German"]["metrics"]["languages"]["deu_Latn"]
    raw_after = json.loads((run_dir / "manifest.json").read_text())
    union = raw_after["nodes"]["language.German"]["metrics"]["languages"]["deu_Latn"]["union"]  # keyed by test set now
    assert union["bleu_13a"] == old_scores["bleu"] and union["chrf++"] == old_scores["chrf++"] and "bleu" not in union
    tree_now, note = run_tree(upgraded)
    assert set(tree_now.nodes) == NODES and note is None
    assert [(lang.code, lang.name) for lang in tree_now.languages] == [("deu_Latn", "German"), ("nld_Latn", "Dutch")]
