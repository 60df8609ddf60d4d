"""Greedy generation and per-language scoring for a seq2seq model (no Ray here).

The node trainer and the driver call this after each stage; it is kept free of Ray and of any
training state so that it can be tested with a tiny random model on CPU and reused from the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hql_ray import dataset as ds_lib
from hql_ray.config import DIRECTIONS, Config
from hql_ray.metrics import smatch_scores, text_scores

N_SAMPLES = 3


@dataclass
class GenerationResult:
    """Outputs in input order; ``clipped[i]`` says source i was cut to max_source_length tokens."""

    outputs: list[str]
    clipped: list[bool]


def _model_device(model) -> torch.device:
    """The device the model's weights live on (a 4-bit model must never be moved with .to())."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def _encode(tokenizer, sources: Sequence[str], max_source_length: int | None) -> tuple[list[list[int]], list[bool]]:
    """Token ids per source, truncated by the tokenizer itself (keeps its EOS), and clip flags."""
    full = tokenizer(list(sources), add_special_tokens=True, truncation=False)["input_ids"]
    if max_source_length is None:  # no truncation (the original's way)
        return full, [False] * len(full)
    clipped = [len(ids) > max_source_length for ids in full]
    long_idx = [i for i, c in enumerate(clipped) if c]
    if long_idx:
        cut = tokenizer([sources[i] for i in long_idx], add_special_tokens=True, truncation=True,
                        max_length=max_source_length)["input_ids"]
        for i, ids in zip(long_idx, cut):
            full[i] = ids
    return full, clipped


def generate(model, tokenizer, sources: Sequence[str], *, batch_size: int = 32,
             max_new_tokens: int = 128, max_source_length: int | None = None,
             device: str | torch.device | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Greedy decoding (one beam, no sampling) in length-sorted batches, outputs in input order.

    Sorting by length keeps padding (wasted compute) small; the longest batch goes first so an
    out-of-memory shows up at once. ``device`` is where inputs go (default: the model's device);
    the model itself is never moved. ``on_batch(done, total)`` reports progress in sources.
    """
    if batch_size < 1 or max_new_tokens < 1 or (max_source_length is not None and max_source_length < 1):
        raise ValueError(f"batch_size, max_new_tokens and max_source_length must be >= 1 "
                         f"(got {batch_size}, {max_new_tokens}, {max_source_length})")
    sources = list(sources)
    if not sources:
        return GenerationResult(outputs=[], clipped=[])
    target = torch.device(device) if device is not None else _model_device(model)
    ids, clipped = _encode(tokenizer, sources, max_source_length)
    order = sorted(range(len(sources)), key=lambda i: len(ids[i]), reverse=True)
    outputs: list[str | None] = [None] * len(sources)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, padding=True,
                                      return_tensors="pt")
                generated = model.generate(
                    input_ids=batch["input_ids"].to(target),
                    attention_mask=batch["attention_mask"].to(target),
                    max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                )
                texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                for i, text in zip(chunk, texts):
                    outputs[i] = text.strip()
                if on_batch is not None:
                    on_batch(min(start + batch_size, len(order)), len(order))
    finally:
        if was_training:
            model.train()
    return GenerationResult(outputs=[o if o is not None else "" for o in outputs], clipped=clipped)


def _finite(value):
    """NaN/inf are not JSON; a metric that produced one is reported as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_language(model, tokenizer, examples_sources: Sequence[str], references: Sequence[str], *,
                      direction: str = "amr2text", **gen_kwargs) -> dict:
    """Generate for one language's test sources and score against its references, as a plain dict.

    amr2text: sacreBLEU, chrF++ and spBLEU (None where unavailable); text2amr: corpus smatch.
    ``gen_kwargs`` go to :func:`generate` (batch_size, max_new_tokens, max_source_length, device).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    sources, references = list(examples_sources), list(references)
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references: "
                         "they must pair up one to one")
    if not sources:
        raise ValueError("no examples to evaluate (0 sources, 0 references)")
    result = generate(model, tokenizer, sources, **gen_kwargs)
    if direction == "amr2text":
        scores = text_scores(result.outputs, references)
        record = {"n": len(sources), "bleu": scores["bleu"], "chrf++": scores["chrf++"],
                  "spbleu": scores["spbleu"], "signatures": scores["signatures"]}
    else:
        scores = smatch_scores(result.outputs, references)
        record = {"n": len(sources), **{k: v for k, v in scores.items() if k != "n"}}
    record = {k: _finite(v) for k, v in record.items()}
    record["clipped"] = sum(result.clipped)
    record["samples"] = [
        {"source": s, "hypothesis": h, "reference": r}
        for s, h, r in list(zip(sources, result.outputs, references))[:N_SAMPLES]
    ]
    return record


def evaluate_node(model, tokenizer, cfg: Config, settings, languages, cache, device) -> dict:
    """Generate on each language's test split and score it (BLEU/chrF++ or smatch)."""
    model.eval()
    results = {}
    for code, name in languages:
        test = ds_lib.language_dataset(settings, code, name, "test", tokenizer, cache)
        results[code] = evaluate_language(
            model,
            tokenizer,
            test["source"],
            test["target"],
            direction=cfg.data.direction,
            batch_size=cfg.eval.batch_size,
            max_new_tokens=cfg.eval.max_new_tokens,
            max_source_length=cfg.data.max_source_length,
            device=device,
        )
    return results
