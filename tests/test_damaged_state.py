"""Damaged state is reported with its path and what to do, and nothing finished is lost (issue 22): a
truncated manifest, a truncated checkpoint, a truncated saved adapter."""

from __future__ import annotations

import pytest

from conftest import node_spec, tiny_overrides
from hql_ray.outputs.manifest import Manifest, read_manifest
from hql_ray.settings.config import make_config
from hql_ray.settings.errors import HQLError, InputError
from hql_ray.settings.tree import load_tree
from hql_ray.training.context import LocalContext
from hql_ray.training.node import train_node


def test_a_truncated_manifest_names_the_previous_record(tmp_path, four_language_tree):
    tree = load_tree(four_language_tree, ["level0", "level1", "language"])
    manifest = Manifest.create(tmp_path / "run" / "manifest.json", tree, {}, "run")
    manifest.update("level0.Indo_European", status="done", adapter="nodes/level0.Indo_European/adapter")
    path = tmp_path / "run" / "manifest.json"
    path.write_text(path.read_text()[:200])  # a disk that failed mid-write
    with pytest.raises(InputError, match="manifest.prev.json: copy it over manifest.json") as err:
        read_manifest(tmp_path / "run")
    assert str(path) in str(err.value)
    (tmp_path / "run" / "manifest.prev.json").replace(path)  # what the message says to do
    assert read_manifest(tmp_path / "run").nodes["level0.Indo_European"].status == "pending"  # the record before


def test_a_truncated_checkpoint_says_which_and_what_to_do(tmp_path, small_corpus, four_language_tree):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **{
        "train.max_steps": 4, "train.checkpoint_every": 2, "eval.generate": "false"})).with_absolute_paths()
    german = node_spec("language.German", [("deu_Latn", "German")])
    train_node(cfg, german, [], LocalContext(checkpoint_root=tmp_path / "ckpt"))
    trainable = tmp_path / "ckpt" / "latest" / "trainable.safetensors"
    trainable.write_bytes(trainable.read_bytes()[:100])
    with pytest.raises(HQLError, match="its checkpoint .* cannot be read .* delete that checkpoint folder") as err:
        train_node(cfg, german, [], LocalContext(checkpoint_root=tmp_path / "ckpt"))
    assert str(tmp_path / "ckpt" / "latest") in str(err.value) and "--resume" in str(err.value)
