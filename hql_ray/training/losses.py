"""A language-model loss that never holds fp32 logits over the whole vocabulary for the whole batch.

mT5's head has 250,112 outputs: for a batch of 8 x 64 target tokens the fp32 logits alone are 0.5 GB,
and HF's loss keeps them (and a few same-sized temporaries) for the backward pass. Here the head and
the cross-entropy run `chunk_rows` rows at a time and the gradient with respect to the hidden states
is computed in the same pass, so at most one chunk of logits exists at once and nothing is recomputed.
The head's weight must be frozen (it is in every mode but fft): its gradient is not computed.
"""

from __future__ import annotations

import torch

IGNORE = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows: int, compute_dtype):
        n = (labels != IGNORE).sum().clamp_min(1)  # a tensor: no host sync
        w = weight.to(compute_dtype)
        acc = torch.promote_types(compute_dtype, torch.float32)  # fp32 logits at least
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = labels[start:start + chunk_rows]
            valid = y != IGNORE
            target = y.clamp_min(0)
            logits = (h.to(compute_dtype) @ w.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None])[:, 0]
            total += ((lse - picked) * valid).sum()
            if grad is not None:
                # d loss / d logits = (softmax - onehot) / n on real tokens, 0 on padding.
                probs = logits.sub_(lse[:, None]).exp_()
                probs.scatter_add_(1, target[:, None], -torch.ones_like(lse)[:, None])
                probs.mul_((valid.to(acc) / n)[:, None])
                grad[start:start + chunk_rows] = (probs.to(compute_dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.has_grad = grad is not None
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out if ctx.has_grad else None), None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_rows: int = 1024, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `labels` (-100 ignored), like
    `F.cross_entropy(logits, labels, ignore_index=-100)`, chunk by chunk. hidden [..., d], labels [...]."""
    if weight.requires_grad:
        raise ValueError("chunked_cross_entropy computes no gradient for the head's weight: freeze it "
                         "or use the model's own loss")
    compute_dtype = compute_dtype or (torch.get_autocast_dtype(hidden.device.type)
                                      if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight,
                                                labels.reshape(-1), chunk_rows, compute_dtype)


def base_model(model):
    """The MT5/T5ForConditionalGeneration under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def seq2seq_hidden(model, batch: dict) -> torch.Tensor:
    """The decoder's last hidden states (what the head reads), as the model's own forward makes them."""
    base = base_model(model)
    encoded = base.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    return base.decoder(input_ids=base._shift_right(batch["labels"]), encoder_hidden_states=encoded,
                        encoder_attention_mask=batch["attention_mask"])[0]


def seq2seq_lm_loss(model, batch: dict, chunk_rows: int = 1024) -> torch.Tensor:
    """`model(**batch).loss` for an (optionally PEFT-wrapped) MT5/T5ForConditionalGeneration, with the
    head and the loss run by `chunked_cross_entropy`."""
    hidden = seq2seq_hidden(model, batch)
    return chunked_cross_entropy(hidden, base_model(model).lm_head.weight, batch["labels"], chunk_rows)
