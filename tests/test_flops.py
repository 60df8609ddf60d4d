"""hql_ray.training.flops: the FLOP count behind MFU, pinned on mT5-large built on the meta device."""

from __future__ import annotations

import pytest

from hql_ray.training import flops


@pytest.fixture(scope="module")
def large():
    return flops.mt5_large_counts(r=256)


def test_mt5_large_parameter_counts(large):
    assert flops.mt5_config().tie_word_embeddings is False  # MT5Config forces True; the real checkpoint is untied
    assert round(large.matrix_params / 1e6, 1) == 1229.5  # embedding + linears + untied head
    assert large.total_params == 1_229_581_312  # + layer norms and relative attention biases
    assert large.lora_params == 292_552_704  # r=256 on q,k,v,o,wi_0,wi_1,wo
    # Encoder tokens also pass the decoder's cross-attention k, v; decoder tokens pass the head.
    assert large.base_enc == 358_612_992 and large.base_dec == 614_727_680
    assert large.lora_enc == large.lora_dec == 146_276_352


def test_flops_per_token(large):
    enc, dec = large.token_flops()
    assert round(enc / 1e9, 3) == 2.312 and round(dec / 1e9, 3) == 3.337


def test_step_flops_adds_attention_and_frozen_ancestors(large):
    enc, dec = large.token_flops()
    attention = 12 * 1024 * (24 * (100**2 + 50**2) + 24 * (30**2 + 10**2 + 100 * 30 + 50 * 10))
    assert flops.step_flops(large, [100, 50], [30, 10]) == pytest.approx(enc * 150 + dec * 40 + attention, rel=1e-12)
    # A depth-1 stack node carries a frozen r=256 ancestor adapter: +4N of LoRA per token.
    deeper = flops.step_flops(large, [100], [30], frozen_lora_r=256, r=256)
    extra = 4 * (large.lora_enc * 100 + large.lora_dec * 30)
    assert deeper - flops.step_flops(large, [100], [30]) == pytest.approx(extra, rel=1e-12)


def test_peak_table():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_tflops("NVIDIA H200") == 989.0
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.peak_tflops("NVIDIA A10G") == 70.0
    assert flops.peak_tflops("Some Future GPU") is None
