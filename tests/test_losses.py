"""hql_ray.training.losses: chunked head + cross-entropy equals the model's own loss, value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hql_ray.training.losses import chunked_cross_entropy, seq2seq_lm_loss


def test_chunked_cross_entropy_matches_full_logits():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, 5:] = -100
    labels[2, 1:] = -100
    expected = F.cross_entropy((hidden @ weight.t()).reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    (want,) = torch.autograd.grad(expected, hidden)
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_rows=4)  # 21 rows: 6 chunks, the last partial
    (got,) = torch.autograd.grad(loss * 3.0, hidden)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert torch.allclose(got, 3.0 * want, rtol=1e-10, atol=1e-14)


def test_head_weight_must_be_frozen():
    with pytest.raises(ValueError, match="freeze"):
        chunked_cross_entropy(torch.randn(2, 4), torch.randn(5, 4, requires_grad=True), torch.tensor([1, 2]))


def test_seq2seq_loss_equals_the_models_loss():
    from transformers import MT5Config, MT5ForConditionalGeneration

    torch.manual_seed(0)
    config = MT5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    config.tie_word_embeddings = False
    model = MT5ForConditionalGeneration(config).double()
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared  # as in the real checkpoint
    model.lm_head.weight.requires_grad_(False)
    batch = {"input_ids": torch.randint(2, 97, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
             "labels": torch.randint(2, 97, (3, 6))}
    batch["attention_mask"][1, 6:] = 0
    batch["labels"][1, 4:] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    expected = model(**batch).loss
    want = torch.autograd.grad(expected, params)
    loss = seq2seq_lm_loss(model, batch, chunk_rows=5)
    got = torch.autograd.grad(loss, params)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
