"""The node on CUDA: 4-bit NF4 with bf16 compute (runs where CUDA is present; test_node.py is the CPU path)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.training.context import LocalContext
from hql_ray.training.node import train_node
from conftest import node_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("mode", ["qlora", "lora"])
def test_node_trains_on_cuda(tmp_path, small_corpus, four_language_tree, mode):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **{
        "model.mode": mode, "train.epochs": 3, "train.max_steps": 12, "train.eval_every": 4,
        "eval.at_nodes": "all"})).with_absolute_paths()
    node = node_spec("language.German", [("deu_Latn", "German")])
    parent = train_node(cfg, node_spec("root", [("deu_Latn", "German")]), [], LocalContext(device="cuda"))
    m = parent.metrics
    assert m.val_loss < 0.8 * m.initial_val_loss
    assert m.languages["deu_Latn"]["flores"].n == 2
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in parent.adapter.tensors.values())
    child = train_node(cfg, node, [parent.adapter], LocalContext(device="cuda"))
    # bf16 compute: the child's start equals the parent's end up to bf16 rounding.
    assert child.metrics.initial_val_loss == pytest.approx(m.val_loss, rel=2e-2)
