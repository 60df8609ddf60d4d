"""The demo's pre-trained tiny base: its tokenizer, that its pre-training learns the task (chrF++ far above the
untrained model's on the sample's test split), that it reads only training data, and its once-only build."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from hql_ray.data import corpus
from hql_ray.scoring import metrics
from hql_ray.training import modeling, tiny_pretrain
from hql_ray.data.dataset import make_pair
from hql_ray.scoring.evaluation import generate

LANGUAGES = [("deu_Latn", "German"), ("spa_Latn", "Spanish")]


@pytest.fixture(scope="module")
def tokenizer():
    return modeling.load_tokenizer(modeling.TINY_PRETRAINED)


def test_tokenizer_is_the_samples_bpe_and_loses_no_text(tokenizer):
    assert len(tokenizer) == tiny_pretrain.BPE_VOCAB
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)  # T5's: pad = decoder start
    ids = tokenizer(text_target="Der Freund schreibt den Brief nicht.").input_ids
    assert ids[-1] == 1 and len(ids) < 15  # a sentence is ~10 tokens (ByT5: 37 bytes)
    unseen = "Ñandú in Zürich — 東京? ok"  # not in the sample: byte-level BPE still round-trips it
    assert tokenizer.decode(tokenizer(unseen).input_ids, skip_special_tokens=True) == unseen
    # Learnt again (as every process does): the same merges.
    tiny_pretrain.sample_tokenizer.cache_clear()
    again = modeling.load_tokenizer(modeling.TINY_PRETRAINED)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_pretraining_raises_chrf_far_above_the_untrained_model(tokenizer):
    """~10 s: two languages, 120 steps of 16; scored on their amr3 test sentences, which it never saw."""
    from transformers import MT5ForConditionalGeneration

    pairs = tiny_pretrain.pretraining_pairs(tiny_pretrain.SAMPLE_DIR, LANGUAGES)
    test = []
    for code, name in LANGUAGES:
        examples, _ = corpus.load_examples(tiny_pretrain.SAMPLE_DIR, code, "test", corpora=["amr3"])
        test += [make_pair("amr2text", name, ex.amr, ex.text) for ex in examples[:10]]
    assert not {s for s, _ in test} & {s for s, _ in pairs}  # held-out graphs

    def chrf(model) -> float:
        hyps = generate(model, tokenizer, [s for s, _ in test], max_new_tokens=24).outputs
        return metrics.chrf_pp(hyps, [t for _, t in test]).score

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MT5ForConditionalGeneration(modeling.tiny_config(len(tokenizer), dropout_rate=0.0))
        before = chrf(model)
        losses = tiny_pretrain.pretrain(model, tokenizer, pairs,
                                        tiny_pretrain.PretrainSettings(steps=120, batch_size=16))
    after = chrf(model)
    assert len(losses) == 120 and losses[-1] < 0.25 * losses[0]
    assert before < 5 and after > 30, (before, after)  # measured: 1.2 -> 42


def test_build_once_from_training_data_only(tmp_path, monkeypatch):
    """Two concurrent builders: one pre-trains (a few steps here), the other waits and gets its folder; the
    next call loads it. Only training splits are read, for the tokenizer and for the model."""
    read = []
    load_examples = corpus.load_examples

    def spy(data_dir, code, split, *args, **kwargs):
        read.append(split)
        return load_examples(data_dir, code, split, *args, **kwargs)

    monkeypatch.setattr(tiny_pretrain.corpus, "load_examples", spy)
    monkeypatch.setattr(tiny_pretrain, "DEFAULT_SETTINGS", tiny_pretrain.PretrainSettings(steps=3))
    pretrain = tiny_pretrain.pretrain
    calls = []
    monkeypatch.setattr(tiny_pretrain, "pretrain", lambda *a, **k: calls.append(1) or pretrain(*a, **k))
    tiny_pretrain.sample_tokenizer.cache_clear()
    paths = [None, None]

    def build(i):
        paths[i] = modeling.resolve_base_model(modeling.TINY_PRETRAINED, tmp_path)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths[0] == paths[1] == str(tmp_path / modeling.TINY_PRETRAINED_DIR_NAME)
    assert len(calls) == 1 and set(read) == {"train"} and len(read) == 2 * 12  # tokenizer + model, 12 languages
    assert modeling.resolve_base_model(modeling.TINY_PRETRAINED, tmp_path) == paths[0] and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [modeling.TINY_PRETRAINED_DIR_NAME]
    record = json.loads((tmp_path / modeling.TINY_PRETRAINED_DIR_NAME / "pretraining.json").read_text())
    assert record["split"] == "train" and record["examples"] == 12 * 280 and len(record["languages"]) == 12
    model = modeling.load_base_model(paths[0], "qlora", torch.device("cpu"))
    assert modeling.is_4bit(model) and model.config.vocab_size == tiny_pretrain.BPE_VOCAB
    assert modeling.load_tokenizer(paths[0])("Der Freund.").input_ids == \
        modeling.load_tokenizer(modeling.TINY_PRETRAINED)("Der Freund.").input_ids
