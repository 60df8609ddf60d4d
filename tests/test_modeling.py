"""Model layer: tiny model, qlora/lora/fft loading, which parameters a step may change."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from hql_ray.settings.config import LoraShape
from hql_ray.settings.errors import InputError
from hql_ray.training.handoff import attach_node_adapter
from hql_ray.training.modeling import (
    MODES, TINY, bitsandbytes_available, is_4bit, load_base_model, load_tokenizer,
    make_4bit_cpu_exact, resolve_base_model,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve_base_model(TINY, tmp_path_factory.mktemp("cache"))


def test_tiny_model_is_the_same_everywhere(tmp_path, tiny):
    rng_before = torch.random.get_rng_state()
    other = resolve_base_model(TINY, tmp_path / "other")
    assert torch.equal(rng_before, torch.random.get_rng_state())  # caller's RNG untouched
    assert other != tiny and other.endswith("tiny-mt5-v1")
    a = load_file(os.path.join(tiny, "model.safetensors"))
    b = load_file(os.path.join(other, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the second call reuses the directory; no temp dirs left behind
    assert resolve_base_model(TINY, tmp_path / "other") == other
    assert sorted(os.listdir(tmp_path / "other")) == ["tiny-mt5-v1"]
    # the tokenizer saved next to the weights is the offline ByT5 one
    assert load_tokenizer(other)("hello").input_ids == load_tokenizer(TINY)("hello").input_ids


def test_tiny_build_race_uses_the_winners_copy(tmp_path, monkeypatch):
    """Another process renames its copy into place first: ours is dropped, theirs is used."""
    import hql_ray.training.modeling as modeling

    real_rename = os.rename

    def rename_after_a_winner(src, dst):
        os.makedirs(dst)
        open(os.path.join(dst, "config.json"), "w").close()
        return real_rename(src, dst)

    monkeypatch.setattr(modeling.os, "rename", rename_after_a_winner)
    path = resolve_base_model(TINY, tmp_path)
    assert sorted(os.listdir(path)) == ["config.json"]  # the winner's (here: a marker) copy
    assert sorted(os.listdir(tmp_path)) == ["tiny-mt5-v1"]  # our temp dir was cleaned up


def test_resolve_other_values(tmp_path):
    assert resolve_base_model("google/mt5-large", tmp_path) == "google/mt5-large"
    with pytest.raises(InputError, match="does not exist") as err:
        resolve_base_model(str(tmp_path / "nope" / "model"), tmp_path)
    assert "nope" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text("{}")
    assert resolve_base_model(str(tmp_path / "ok"), tmp_path) == str(tmp_path / "ok")


def test_mode_and_bnb_checks(tiny):
    with pytest.raises(ValueError, match="qlora, lora, fft"):
        load_base_model(tiny, "4bit", CPU)
    ok, reason = bitsandbytes_available(CPU)
    assert ok, reason
    if not torch.cuda.is_available():
        assert bitsandbytes_available(torch.device("cuda"))[0] is False


def test_lora_settings_defaults_match_the_original():
    cfg = LoraShape().to_peft()
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.lora_dropout) == (256, 256, True, 0.05)
    assert set(cfg.target_modules) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    assert cfg.bias == "none" and cfg.task_type == "SEQ_2_SEQ_LM"


def _batch():
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(2, 300, (2, 10), generator=g),
            "labels": torch.randint(2, 300, (2, 6), generator=g)}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", MODES)
def test_one_step_changes_only_trainable_params(tiny, mode):
    base = load_base_model(tiny, mode, CPU)
    assert is_4bit(base) == (mode == "qlora")
    if mode == "qlora":
        assert make_4bit_cpu_exact(base) == 2 * 6 + 2 * 10  # q,k,v,o(,cross),wi_0,wi_1; wo stays fp32
        assert all(not m.support_avx512bf16_for_cpu for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu"))
    model = base if mode == "fft" else attach_node_adapter(base, LoraShape(r=4, alpha=8), "stack", [])
    # remove_duplicate=False: tied embeddings (shared / embed_tokens / lm_head) appear under each name
    trainable = {k for k, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    if mode == "fft":
        assert trainable == {k for k, _ in model.named_parameters(remove_duplicate=False)}
    else:
        assert trainable and all("lora_" in k and ".node." in k for k in trainable)
    before = _snapshot(model)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_batch()).loss.backward()
    opt.step()
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    if mode != "fft":  # B starts at zero, so the first step moves exactly the B matrices
        assert changed == {k for k in trainable if "lora_B" in k}
    if mode == "qlora":  # the packed 4-bit bytes and their quant state are untouched
        packed = [k for k in before if before[k].dtype == torch.uint8]
        assert packed and all(torch.equal(before[k], after[k]) for k in packed)


@pytest.mark.parametrize("mode", ["qlora", "lora"])
def test_gradient_checkpointing_still_reaches_the_adapter(tiny, mode):
    base = load_base_model(tiny, mode, CPU, gradient_checkpointing=True)
    flag = "is_activation_checkpointing" if hasattr(base, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(base, flag)
    model = attach_node_adapter(base, LoraShape(r=4, alpha=8), "stack", [])
    model.train()
    model(**_batch()).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
