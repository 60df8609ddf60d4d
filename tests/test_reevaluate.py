"""A node survives its evaluation (issue 11): a failed evaluation keeps the trained adapter, and
`--resume` evaluates such a node again without training it again."""

from __future__ import annotations

import json

import pytest

from conftest import node_spec, tiny_overrides, with_section
from hql_ray.scoring import evaluation
from hql_ray.settings.records import NodeMetrics, NodeStarted
from hql_ray.training.adapter_files import state_checksum
from hql_ray.settings.config import make_config
from hql_ray.training.context import LocalContext
from hql_ray.orchestration.driver import Driver
from hql_ray.training.node import train_node
from hql_ray.training.reevaluate import evaluate_trained_node

GERMAN = node_spec("language.German", [("deu_Latn", "German")])
TWO_LEAVES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"


def node_config(tmp_path, small_corpus, four_language_tree):
    return make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **{
        "train.max_steps": 3, "eval.at_nodes": "all"})).with_absolute_paths()


def test_a_failed_evaluation_keeps_the_trained_adapter(tmp_path, small_corpus, four_language_tree, monkeypatch):
    cfg = node_config(tmp_path, small_corpus, four_language_tree)
    trained = train_node(cfg, GERMAN, [], LocalContext())

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory while generating")

    monkeypatch.setattr(evaluation, "evaluate_node", broken)
    failed = train_node(cfg, GERMAN, [], LocalContext())
    assert failed.metrics.evaluation_error == "RuntimeError: CUDA out of memory while generating"
    assert not failed.metrics.languages and failed.metrics.steps == 3
    # Same seed, same steps: the adapter is the one a run without the failure trains.
    assert state_checksum(failed.adapter) == state_checksum(trained.adapter)

    monkeypatch.undo()
    again = evaluate_trained_node(cfg, GERMAN, [failed.adapter], LocalContext())
    assert again.adapter is None and again.metrics.evaluation_error is None
    # The saved adapter scores exactly what the node scored when its evaluation worked.
    assert again.metrics.languages == trained.metrics.languages


def test_a_failing_re_evaluation_is_recorded(tmp_path, small_corpus, four_language_tree, monkeypatch):
    cfg = node_config(tmp_path, small_corpus, four_language_tree)
    adapter = train_node(with_section(cfg, "eval", generate=False), GERMAN, [], LocalContext()).adapter
    monkeypatch.setattr(evaluation, "evaluate_node", lambda *a, **k: 1 / 0)
    again = evaluate_trained_node(cfg, GERMAN, [adapter], LocalContext())
    assert again.metrics == NodeMetrics(evaluation_error="ZeroDivisionError: division by zero")


def test_resume_evaluates_again_without_training(ray_session, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LEAVES)
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{
        "run.name": "evalfail", "tree.levels": "[level0, language]", "resources.num_gpus": 0,
        "resources.cpus_per_worker": 1, "train.max_steps": 2})
    first = Driver(make_config(overrides=overrides)).run()
    assert {v.status for v in first.nodes.values()} == {"done"}
    # What an evaluation that crashed leaves in the manifest (node.finish's guard): no scores, the error.
    path = tmp_path / "evalfail" / "manifest.json"
    data = json.loads(path.read_text())
    leaf = data["nodes"]["language.Dutch"]
    scores = leaf["metrics"].pop("languages")
    leaf["metrics"]["evaluation_error"] = "RuntimeError: CUDA out of memory"
    path.write_text(json.dumps(data))
    card = tmp_path / "evalfail" / "final" / "nld_Latn" / "README.md"
    card.write_text("stale")

    events = []
    after = Driver(make_config(overrides=overrides + ["run.resume=true"]), on_event=events.append).run()
    assert not [e for e in events if isinstance(e, NodeStarted)]  # nothing trained again
    entry = after.nodes["language.Dutch"]
    assert entry.metrics.evaluation_error is None
    assert {c: {s: v.to_json() for s, v in sets.items()} for c, sets in entry.metrics.languages.items()} == scores
    assert entry.checksum == first.nodes["language.Dutch"].checksum
    assert entry.started_at == first.nodes["language.Dutch"].started_at
    assert entry.metrics.steps == 2  # the training metrics are kept
    assert "chrF++" in card.read_text() or "chrf" in card.read_text().lower()
    assert after.data["status"] == "done"
