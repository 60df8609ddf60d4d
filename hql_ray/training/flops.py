"""Model FLOPs of the node's QLoRA training step, for MFU (model FLOPs utilisation).

Per token a linear layer with N weights costs 2N FLOPs forward. The frozen 4-bit base needs the
forward and the gradient of its input (2N + 2N = 4N, no weight gradient); a trainable LoRA needs
forward, input and weight gradients (6N). Embedding lookups cost nothing. In an encoder-decoder each
linear layer sees either encoder or decoder tokens: the decoder's cross-attention k and v run on
encoder tokens, the head on decoder tokens. Attention scores (QK^T and AV) cost 4 * S * inner per
query token per layer forward, x3 with the backward. So, per step:

    FLOPs = sum over tokens of (4 * N_base + 6 * N_lora + 4 * N_frozen_lora)(the token's side)
          + 12 * inner * (enc_layers * sum s_i^2 + dec_layers * (sum t_i^2 + sum s_i * t_i))

Counted on REAL (non-pad) tokens this is the model's work (MFU); on padded shapes it is what the GPU
did (HFU). The parameter counts come from the model built on the meta device (no memory, no download).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hql_ray.settings.config import TARGET_MODULES

LORA_TARGETS = tuple(TARGET_MODULES)  # every linear layer but the head, as the runs train
# google/mt5-large's config.json, written out (nothing is downloaded).
MT5_LARGE = dict(vocab_size=250112, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                 num_heads=16, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), matched against torch.cuda.get_device_name().
# Most specific name first: "H100 PCIe" before "H100".
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("A10G", 70.0),
               ("L40S", 362.0), ("L4", 121.0)]


def mt5_config(**overrides):
    """An MT5Config with an untied head, like the real google/mt5-large checkpoint.

    transformers 5.24's MT5Config forces tie_word_embeddings=True whatever is passed, so it is
    reset after construction.
    """
    from transformers import MT5Config

    config = MT5Config(**{**MT5_LARGE, **overrides})
    config.tie_word_embeddings = False
    return config


def meta_model(config):
    """The model on the meta device (real shapes, no storage); encoder/decoder embeddings share
    `shared` as in the checkpoint (with an untied head transformers 5 would give them their own)."""
    from transformers import MT5ForConditionalGeneration

    with torch.device("meta"):
        model = MT5ForConditionalGeneration(config)
    model.encoder.embed_tokens = model.shared
    model.decoder.embed_tokens = model.shared
    return model


@dataclass
class Counts:
    """Weights each token passes through, per side (encoder tokens / decoder tokens)."""

    base_enc: int  # frozen linear weights applied to encoder tokens (incl. the decoder's cross k, v)
    base_dec: int  # frozen linear weights applied to decoder tokens (incl. the head)
    lora_enc: int  # trainable LoRA weights applied to encoder tokens
    lora_dec: int
    enc_layers: int
    dec_layers: int
    attn_inner: int  # num_heads * d_kv
    total_params: int  # every distinct base parameter (norms and the relative bias included)
    matrix_params: int  # embedding + linear weights + head: what the FLOP formula uses

    @property
    def lora_params(self) -> int:
        return self.lora_enc + self.lora_dec

    def token_flops(self, lora_scale: float = 1.0) -> tuple[float, float]:
        """(FLOPs per encoder token, per decoder token) without attention scores."""
        return (4 * self.base_enc + 6 * self.lora_enc * lora_scale,
                4 * self.base_dec + 6 * self.lora_dec * lora_scale)


def _side(name: str) -> str:
    if name.startswith("encoder.") or (".EncDecAttention." in name and name.rsplit(".", 1)[-1] in ("k", "v")):
        return "enc"
    return "dec"


def count(model, r: int, targets=LORA_TARGETS) -> Counts:
    """Counts from a (meta or real) MT5ForConditionalGeneration and a LoRA of rank r on `targets`."""
    base = {"enc": 0, "dec": 0}
    lora = {"enc": 0, "dec": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        side = _side(name)
        base[side] += module.weight.numel()
        if name.rsplit(".", 1)[-1] in targets:
            lora[side] += r * (module.in_features + module.out_features)
    cfg = model.config
    params = {id(p): p.numel() for p in model.parameters()}
    linear = base["enc"] + base["dec"]
    return Counts(base_enc=base["enc"], base_dec=base["dec"], lora_enc=lora["enc"], lora_dec=lora["dec"],
                  enc_layers=cfg.num_layers, dec_layers=cfg.num_decoder_layers,
                  attn_inner=cfg.num_heads * cfg.d_kv, total_params=sum(params.values()),
                  matrix_params=linear + model.shared.weight.numel())


def mt5_large_counts(r: int = 256, targets=LORA_TARGETS) -> Counts:
    return count(meta_model(mt5_config()), r, targets)


def step_flops(counts: Counts, src_lens, tgt_lens, frozen_lora_r: int = 0, r: int | None = None) -> float:
    """Model FLOPs of one training step over examples with these source/target token counts.

    `frozen_lora_r`: rank of the frozen ancestors' adapter a stack-mode node carries (4N, like the
    base); `r` is the trainable rank the counts were made with (needed only with frozen_lora_r).
    """
    src = [int(s) for s in src_lens]
    tgt = [int(t) for t in tgt_lens]
    enc_tok, dec_tok = counts.token_flops()
    if frozen_lora_r:
        if not r:
            raise ValueError("step_flops: pass r (the counts' LoRA rank) with frozen_lora_r")
        enc_tok += 4 * counts.lora_enc * frozen_lora_r / r
        dec_tok += 4 * counts.lora_dec * frozen_lora_r / r
    linear = enc_tok * sum(src) + dec_tok * sum(tgt)
    attention = 12 * counts.attn_inner * (
        counts.enc_layers * sum(s * s for s in src)
        + counts.dec_layers * (sum(t * t for t in tgt) + sum(s * t for s, t in zip(src, tgt))))
    return float(linear + attention)


def batch_lengths(batch: dict) -> tuple[list[int], list[int]]:
    """Real source and target lengths of a collated batch (attention mask; labels != -100)."""
    src = batch["attention_mask"].sum(dim=1).tolist()
    tgt = (batch["labels"] != -100).sum(dim=1).tolist()
    return src, tgt


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak for a GPU name as torch.cuda.get_device_name() gives it; None if unknown."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None
