"""The validation loss two ways (train.validation_loss), on the tiny model: "token" (every label token of the set
weighs the same, our default) and "batch_mean" (the original HF Trainer's eval_loss: the mean of per-batch mean
losses), each checked against losses summed here example by example."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from hql_ray.data import batching
from hql_ray.data import dataset as ds_lib
from hql_ray.settings.config import make_config
from hql_ray.settings.errors import ConfigError
from hql_ray.training import modeling
from hql_ray.training.context import LocalContext
from hql_ray.training.node import build_model, validation_loss

LANGUAGES = [("deu_Latn", "German")]


@pytest.fixture(scope="module")
def setup(small_corpus, four_language_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("val")
    cfg = make_config(overrides=tiny_overrides(out, small_corpus, four_language_tree, **{
        "model.mode": "lora", "eval.batch_size": 4})).with_absolute_paths()
    tokenizer = modeling.load_tokenizer(cfg.model.base)
    data = ds_lib.node_dataset(ds_lib.DataSettings.from_config(cfg), LANGUAGES, "validation", tokenizer,
                               cfg.cache_dir)
    torch.manual_seed(0)
    model = build_model(cfg, [], torch.device("cpu"))
    return cfg, model, data, tokenizer.pad_token_id


def per_example(model, data, pad_id) -> list[tuple[float, int]]:
    """(summed token loss, label tokens) of each example, one forward each (no padding at all)."""
    out = []
    with torch.no_grad():
        for row in data:
            batch = batching.collate([row], pad_id)
            logits = model(**batch).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1),
                                                     ignore_index=-100, reduction="sum")
            out.append((float(loss), int((batch["labels"] != -100).sum())))
    return out


def test_token_and_batch_mean(setup):
    cfg, model, data, pad_id = setup
    assert len(data) == 8  # amr3's 6 + flores' 2 first validation rows: two batches of eval.batch_size 4
    losses = per_example(model, data, pad_id)
    model.train()  # (as during training: validation runs in eval mode, then puts it back)
    token = validation_loss(model, data, pad_id, cfg, LocalContext())
    assert model.training
    assert cfg.train.validation_loss == "token"
    assert token == pytest.approx(sum(s for s, _ in losses) / sum(n for _, n in losses), rel=1e-5)

    lengths = ds_lib.example_lengths(data)
    order = sorted(range(len(data)), key=lengths.__getitem__)  # the batches validation_loss makes
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    batch_means = [sum(losses[i][0] for i in b) / sum(losses[i][1] for i in b) for b in batches]
    cfg.train.validation_loss = "batch_mean"
    try:
        batch_mean = validation_loss(model, data, pad_id, cfg, LocalContext())
    finally:
        cfg.train.validation_loss = "token"
    assert batch_mean == pytest.approx(sum(batch_means) / len(batch_means), rel=1e-5)
    assert abs(batch_mean - token) > 1e-4  # the batches hold different numbers of label tokens: the rules differ


def test_the_rule_is_checked():
    assert make_config(overrides=["train.validation_loss=batch_mean"]).train.validation_loss == "batch_mean"
    with pytest.raises(ConfigError, match="train.validation_loss must be one of token, batch_mean"):
        make_config(overrides=["train.validation_loss=mean"])
