"""Generation and per-language scoring with a tiny random MT5 (no download, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import ByT5Tokenizer, MT5Config, MT5ForConditionalGeneration

from hql_ray import metrics
from hql_ray.evaluation import GenerationResult, evaluate_language, generate

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SOURCES = [
    "Translate to German: (w / want-01 :ARG0 (b / boy) :ARG1 (g / go-02 :ARG0 b))",
    "(a / alpha)",
    "x",
    "Translate to Tok_Pisin: (d / dog)",
    "hello there",
    "(b / beta :ARG0 (c / cat))",
]


@pytest.fixture(autouse=True)
def no_spbleu(monkeypatch):
    """Scoring must never reach for the network in tests."""
    monkeypatch.setenv(metrics.SPBLEU_ENV, "0")
    metrics.reset_spbleu()
    yield
    metrics.reset_spbleu()


@pytest.fixture(scope="module")
def tok():
    return ByT5Tokenizer()


def _tiny_model(tok, letters_only: bool):
    torch.manual_seed(0)
    config = MT5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                       num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                       eos_token_id=1, tie_word_embeddings=False)
    model = MT5ForConditionalGeneration(config)
    if letters_only:
        # A random model mostly emits EOS or special tokens (empty strings after decoding). Zeroing
        # every LM-head row but lowercase letters makes it write letters, never EOS, so outputs are
        # non-empty, differ by input and run to exactly max_new_tokens bytes.
        keep = torch.zeros(len(tok), dtype=torch.bool)
        keep[[ord(ch) + 3 for ch in LETTERS]] = True  # ByT5: byte b is token b + 3
        with torch.no_grad():
            model.lm_head.weight[~keep] = 0.0
    return model


@pytest.fixture(scope="module")
def model(tok):
    return _tiny_model(tok, letters_only=True)


def test_outputs_come_back_in_input_order(model, tok):
    result = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=8)
    assert isinstance(result, GenerationResult)
    assert len(result.outputs) == len(SOURCES) == len(result.clipped)
    one_by_one = [generate(model, tok, [s], max_new_tokens=8).outputs[0] for s in SOURCES]
    assert result.outputs == one_by_one
    assert len(set(result.outputs)) > 1  # the order check means something only if outputs differ
    assert all(o and set(o) <= set(LETTERS) for o in result.outputs)


def test_batch_size_does_not_change_outputs(model, tok):
    one = generate(model, tok, SOURCES, batch_size=1, max_new_tokens=8)
    four = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=8)
    assert one.outputs == four.outputs
    assert one.clipped == four.clipped == [False] * len(SOURCES)


def test_long_sources_are_truncated_and_flagged(model, tok):
    limit = 12  # ByT5: bytes + EOS, so sources of 12+ bytes are clipped
    result = generate(model, tok, SOURCES, max_new_tokens=4, max_source_length=limit)
    assert result.clipped == [len(s.encode()) + 1 > limit for s in SOURCES]
    assert result.clipped == [True, False, False, True, False, True]
    # A clipped source generates exactly what its first limit-1 bytes (+ EOS) generate.
    prefix = SOURCES[0].encode()[: limit - 1].decode()
    assert result.outputs[0] == generate(model, tok, [prefix], max_new_tokens=4).outputs[0]


def test_max_new_tokens_bounds_output_length(model, tok):
    for n in (1, 5, 9):
        outputs = generate(model, tok, SOURCES, max_new_tokens=n).outputs
        assert [len(o.encode()) for o in outputs] == [n] * len(SOURCES)  # letters only: never EOS


def test_generation_leaves_training_mode_and_grads_alone(tok):
    model = _tiny_model(tok, letters_only=False)
    model.train()
    progress = []
    result = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=3, device="cpu",
                      on_batch=lambda done, total: progress.append((done, total)))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert progress == [(4, 6), (6, 6)]
    assert all(isinstance(o, str) and o == o.strip() for o in result.outputs)
    assert generate(model, tok, []) == GenerationResult(outputs=[], clipped=[])


def test_bad_generation_settings_are_refused(model, tok):
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tok, SOURCES, batch_size=0)


def test_evaluate_language_amr2text(model, tok):
    refs = [f"reference sentence {i}" for i in range(len(SOURCES))]
    record = evaluate_language(model, tok, SOURCES, refs, max_new_tokens=6, max_source_length=12)
    assert json.loads(json.dumps(record)) == record
    assert record["n"] == len(SOURCES)
    assert record["clipped"] == 3
    for key in ("bleu", "chrf++"):
        assert math.isfinite(record[key]) and 0.0 <= record[key] <= 100.0
    assert record["spbleu"] is None  # disabled in tests
    assert record["signatures"]["bleu"].startswith("nrefs:1|")
    assert len(record["samples"]) == 3
    assert record["samples"][0]["source"] == SOURCES[0]
    assert record["samples"][0]["reference"] == refs[0]
    assert len(record["samples"][0]["hypothesis"]) == 6


def test_evaluate_language_text2amr_scores_invalid_graphs_as_empty(model, tok):
    gold = ["(a / alpha :ARG0 (b / beta))"] * len(SOURCES)
    record = evaluate_language(model, tok, SOURCES, gold, direction="text2amr", max_new_tokens=4)
    assert json.loads(json.dumps(record)) == record
    assert record["n"] == len(SOURCES)
    assert record["valid_share"] == 0.0  # a letters-only model never writes a graph
    assert (record["match"], record["test"], record["gold"]) == (0, 0, 4 * len(SOURCES))
    assert (record["precision"], record["recall"], record["f1"]) == (0.0, 0.0, 0.0)
    assert record["clipped"] == 0 and len(record["samples"]) == 3


def test_evaluate_language_checks_its_inputs(model, tok):
    with pytest.raises(ValueError, match="direction"):
        evaluate_language(model, tok, SOURCES, SOURCES, direction="text2text")
    with pytest.raises(ValueError, match="6 sources but 5 references"):
        evaluate_language(model, tok, SOURCES, SOURCES[:5])
