"""Frozen ancestors held in the base's compute dtype (issue 11: GPU memory at depth).

On a GPU the base computes in bf16, so a leaf's rank-768 ancestors are held in bf16 instead of fp32
(half the bytes). The exported adapter stays the exact fp32 chain; the logit difference between the
model as trained (bf16 ancestors) and the exact export is the tolerance measured here.
"""

from __future__ import annotations

import pytest
import torch

from hql_ray.settings.handoffs import HANDOFFS
from hql_ray.training.handoff import ANCESTORS, NODE, attach_node_adapter, base_compute_dtype, node_adapter_state
from hql_ray.training.modeling import TINY, load_base_model, resolve_base_model
from tests.test_handoff import NODE_SPEC, SPECS, _logits, _randomize

CPU = torch.device("cpu")
# max |logit difference| / max |logit|, bf16 ancestors vs fp32, tiny model (logits ~40-60);
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per factor): measured 7.9e-4.
BF16_REL_TOL = 5e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve_base_model(TINY, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def chain(tiny):
    chain = []
    for i, spec in enumerate(SPECS):
        model = attach_node_adapter(load_base_model(tiny, "lora", CPU), spec, "stack", chain)
        _randomize(model, seed=i)
        chain = HANDOFFS["stack"].handed_on([*chain, node_adapter_state(model)])
    return chain


def _dtypes(model, adapter: str) -> set:
    return {p.dtype for n, p in model.named_parameters() if f".{adapter}." in n and "lora_" in n}


def test_the_compute_dtype_is_read_from_the_base(tiny):
    assert base_compute_dtype(load_base_model(tiny, "qlora", CPU)) == torch.float32  # CPU: fp32 compute
    assert base_compute_dtype(load_base_model(tiny, "qlora", CPU, compute_dtype=torch.bfloat16)) == torch.bfloat16
    assert base_compute_dtype(load_base_model(tiny, "lora", CPU, compute_dtype=torch.bfloat16)) == torch.bfloat16


def test_on_a_fp32_base_the_ancestors_stay_fp32(tiny, chain):
    model = attach_node_adapter(load_base_model(tiny, "lora", CPU), NODE_SPEC, "stack", chain)
    assert _dtypes(model, ANCESTORS) == {torch.float32} and _dtypes(model, NODE) == {torch.float32}


def test_bf16_ancestors_halve_their_bytes_and_stay_within_tolerance(tiny, chain):
    exact = attach_node_adapter(load_base_model(tiny, "lora", CPU), NODE_SPEC, "stack", chain)
    _randomize(exact, seed=9)
    node = node_adapter_state(exact)
    held = attach_node_adapter(load_base_model(tiny, "lora", CPU), NODE_SPEC, "stack", chain,
                               frozen_dtype=torch.bfloat16)
    held.load_state_dict({k: v for k, v in exact.state_dict().items() if f".{NODE}." in k}, strict=False)
    assert _dtypes(held, ANCESTORS) == {torch.bfloat16}
    assert _dtypes(held, NODE) == {torch.float32}  # the trained adapter keeps fp32 master weights
    assert node_adapter_state(held).tensors.keys() == node.tensors.keys()
    assert all(torch.equal(node_adapter_state(held).tensors[k], t) for k, t in node.tensors.items())

    def nbytes(model):
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{ANCESTORS}." in n)

    assert nbytes(held) * 2 == nbytes(exact)
    a, b = _logits(exact), _logits(held)
    rel = float((a - b).abs().max() / a.abs().max())
    print(f"bf16 ancestors: relative logit difference {rel:.2e}")
    assert 0 < rel < BF16_REL_TOL, rel  # not bitwise (the factors were rounded), but close
    grads = torch.autograd.grad(held(input_ids=torch.tensor([[5, 6, 7, 1]]),
                                     labels=torch.tensor([[8, 9, 1]])).loss,
                                [p for p in held.parameters() if p.requires_grad])
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
