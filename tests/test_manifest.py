"""The run record's writes: `update` serializes only the node it changes, yet the file is always exactly
the whole record's JSON (what `save` writes and every reader parses)."""

from __future__ import annotations

import json

from hql_ray.outputs.manifest import PREVIOUS, Manifest, read_manifest
from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeResources
from hql_ray.settings.tree import load_tree


def whole_record(manifest: Manifest) -> str:
    return json.dumps(manifest.to_dict(), indent=2, default=str) + "\n"


def test_an_update_rewrites_one_node_and_the_file_is_the_whole_record(tmp_path, four_language_tree):
    tree = load_tree(four_language_tree, ["level0", "level1", "language"])
    path = tmp_path / "run" / "manifest.json"
    manifest = Manifest.create(path, tree, {"train": {"max_steps": 4}}, "run")
    root, german = "level0.Indo_European", "language.German"
    manifest.update(root, status="running", started_at=1.5, resources=NodeResources(workers=2))
    manifest.update(german, status="done", history=[HistoryPoint(step=2, train_loss=3.25)],
                    metrics=NodeMetrics(val_loss=2.5))
    manifest.update(root, status="done", finished_at=9.0)
    assert path.read_text() == whole_record(manifest)
    again = read_manifest(tmp_path / "run")
    assert again.nodes[root].status == "done" and again.nodes[root].resources.workers == 2
    assert again.nodes[german].history[0].train_loss == 3.25 and again.nodes[german].metrics.val_loss == 2.5
    assert json.loads((tmp_path / "run" / PREVIOUS).read_text())["nodes"][root]["status"] == "running"

    # A record changed in place, then saved: save() serializes every node again.
    manifest.nodes[german].metrics.val_loss = 1.75
    manifest.save()
    assert read_manifest(path).nodes[german].metrics.val_loss == 1.75
    assert path.read_text() == whole_record(manifest)


def test_a_record_without_nodes_is_written_whole(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json", {"format": 3, "run": "empty", "nodes": {}})
    manifest.save()
    assert (tmp_path / "manifest.json").read_text() == whole_record(manifest)
    assert json.loads((tmp_path / "manifest.json").read_text())["nodes"] == {}
