"""Greedy generation and scoring of a node's languages on their test sets (no Ray here).

Each test set is scored apart, as the original did: FLORES test for every language, LDC2020T07 for
the languages that have it, amr3 test only when eval.test_sets lists it, any other corpus's test split
when it does (or when it is a training corpus and eval.test_sets is left to the data). A node's scores
are {code: {test set: scores}} (`evaluate_node`); the metrics are hql_ray.scoring.metrics'. Kept free of Ray and of
training state so that it can be tested with a tiny random model on CPU and reused from the CLI.

References are the test set's raw sentences. The original decoded them from the tokenized labels
(mT5's SentencePiece normalisation applied, unknown pieces dropped), which can differ slightly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from hql_ray.data import corpus
from hql_ray.data import dataset as ds_lib
from hql_ray.settings.config import DIRECTIONS, Config
from hql_ray.settings.errors import InputError
from hql_ray.scoring.metrics import (ORIGINAL_NAMES, effective_lid_model, read_lid_baseline, smatch_scores,
                                    text_scores)
from hql_ray.settings.records import TEXT_METRICS, Languages, Sample, Task, TestSetScores, TextsRef

log = logging.getLogger(__name__)

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


@dataclass
class GeneratedTexts:
    """A test set's texts, line-aligned: what was generated from what, against what."""

    sources: list[str]
    hypotheses: list[str]
    references: list[str]


def evaluate_language(model, tokenizer, examples_sources: Sequence[str], references: Sequence[str], *,
                      direction: str = "amr2text", code: str | None = None, spbleu_model: str | None = None,
                      lid_model: str | None = None, reference_lid: float | None = None,
                      **gen_kwargs) -> tuple[TestSetScores, GeneratedTexts]:
    """Generate for one test set of one language and score it against its references.

    amr2text: spBLEU, BLEU (13a), chrF++, LID and LID diff (hql_ray.scoring.metrics.text_scores; ``code`` names
    the language for LID, ``reference_lid`` the references' LID from the baseline file, None = computed
    here); text2amr: corpus smatch. ``gen_kwargs`` go to :func:`generate` (batch_size, max_new_tokens,
    max_source_length, device). Returns the scores and the texts they were computed on.
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
        scores = text_scores(result.outputs, references, code=code, spbleu_model=spbleu_model,
                             lid_model=lid_model, reference_lid=reference_lid)
    else:
        scores = smatch_scores(result.outputs, references)
    record = TestSetScores.from_json({**scores, "n": len(sources)})
    record = dataclasses.replace(record, **{f.name: None for f in dataclasses.fields(record)
                                            if isinstance(getattr(record, f.name), float)
                                            and not math.isfinite(getattr(record, f.name))})
    record.clipped = sum(result.clipped)
    record.samples = [Sample(s, h, r) for s, h, r in list(zip(sources, result.outputs, references))[:N_SAMPLES]]
    return record, GeneratedTexts(sources, result.outputs, references)


def not_scored(reason: str, n: int = 0, direction: str = "amr2text") -> TestSetScores:
    """The scores of a test set that could not be scored: every metric "not computed" with the reason."""
    names = TEXT_METRICS if direction == "amr2text" else ("smatch",)
    return TestSetScores(n=n, not_computed={m: reason for m in names}, error=reason)


def _baseline(cfg: Config) -> dict[str, dict[str, float]]:
    """The references' LID from eval.lid_baseline as this worker sees the file ({} if absent or unreadable
    here: then the worker computes them, and the driver writes them to the file at the end of the run)."""
    if not cfg.eval.lid_baseline or cfg.data.direction != "amr2text" or not effective_lid_model(cfg.eval.lid_model):
        return {}
    try:
        return read_lid_baseline(cfg.eval.lid_baseline)
    except InputError as err:
        log.warning("LID baseline not used, the references' LID is computed instead: %s", err)
        return {}


def evaluate_test_set(model, tokenizer, cfg: Config, code: str, test_set: str, sources: Sequence[str],
                      references: Sequence[str], baseline: dict, device,
                      on_batch: Callable[[int, int], None] | None = None
                      ) -> tuple[TestSetScores, GeneratedTexts | None]:
    """One language's one test set, scored, and its texts; a failure is recorded in the scores (the trained
    node is not lost to it). ``on_batch(done, total)``: generation progress (`generate`)."""
    if not sources:
        return not_scored("the test set has no examples", direction=cfg.data.direction), None
    reference_lid = (baseline.get(test_set) or {}).get(code)
    try:
        record, texts = evaluate_language(
            model, tokenizer, sources, references, direction=cfg.data.direction, code=code,
            spbleu_model=cfg.eval.spbleu_model, lid_model=cfg.eval.lid_model, reference_lid=reference_lid,
            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
            max_source_length=cfg.data.max_source_length, device=device, on_batch=on_batch)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory or a bad gold graph: say so, keep the node
        log.exception("evaluation of %s on %s failed", code, test_set)
        return not_scored(f"evaluation failed: {type(exc).__name__}: {exc}", len(sources), cfg.data.direction), None
    if record.reference_lid is not None:
        record.reference_lid_source = "eval.lid_baseline" if reference_lid is not None else "computed"
    return record, texts


def evaluate_node(model, tokenizer, cfg: Config, settings, languages, cache, device,
                  node_id: str | None = None,
                  progress: Callable[[Task], None] | ds_lib.StepProgress | None = None) -> Languages:
    """Generate on each test set of each language and score it: {code: {test set: scores}}.

    Test sets in eval.test_sets order (None: the data's, `corpus.test_sets_of`); a language without a test
    set (LDC2020T07 has four languages) simply lacks that key. With ``node_id``, the texts are also written
    under the run folder (`write_node_texts`) and each record names them under `texts`. ``progress`` (e.g.
    `ctx.progress`) hears the generation of each test set batch by batch, then its scoring (a `Task`, phase
    "evaluate").
    """
    model.eval()
    baseline = _baseline(cfg)
    steps = ds_lib.as_step_progress(progress)
    if steps.node_id is None:
        steps.node_id = node_id
    results: Languages = {}
    test_sets = corpus.test_sets_of(cfg.data.dir, cfg.data.corpora, cfg.eval.test_sets)
    for index, (code, name) in enumerate(languages, 1):
        per_set: dict[str, TestSetScores] = {}
        texts: dict[str, GeneratedTexts] = {}
        for test_set in test_sets:
            try:
                test = ds_lib.test_set_dataset(settings, code, name, test_set, tokenizer, cache)
            except Exception as exc:  # noqa: BLE001 - a bad test file costs its scores, not the other sets'
                log.exception("test set %s of %s not readable", test_set, code)
                per_set[test_set] = not_scored(f"test set not readable: {type(exc).__name__}: {exc}",
                                               direction=cfg.data.direction)
                continue
            if test is None:
                continue

            def on_batch(done: int, total: int, test_set=test_set) -> None:
                steps(Task("generate", code, index, len(languages), test_set=test_set, done=done, total=total))
                if done == total:
                    steps(Task("score", code, index, len(languages), test_set=test_set))

            if len(test):
                on_batch(0, len(test))
            per_set[test_set], generated = evaluate_test_set(model, tokenizer, cfg, code, test_set, test["source"],
                                                             test["target"], baseline, device, on_batch=on_batch)
            if generated is not None:
                texts[test_set] = generated
        if node_id is not None:
            write_node_texts(cfg.run_dir, texts_folder(cfg, node_id), code, per_set, texts)
        results[code] = per_set
    return results


# ---- the texts behind the scores (issue 13) ------------------------------------------------------------
TEXT_FILES = {"sources": "source.txt", "hypotheses": "hypothesis.txt", "references": "reference.txt"}


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def texts_folder(cfg: Config, node_id: str) -> str:
    """evaluation/<node>, relative to the run folder; in a run with a `tune:` section each trial's
    evaluation gets its own subfolder (trials of a node run at once), named by its values."""
    folder = f"evaluation/{node_id}"
    if cfg.tune:
        lora = cfg.model.lora
        folder += f"/trial_r{lora.r}_alpha{lora.lora_alpha}_lr{cfg.train.learning_rate:g}"
    return folder


def write_node_texts(run_dir: str | Path, folder: str, code: str, per_set: dict[str, TestSetScores],
                     texts: dict[str, GeneratedTexts]) -> None:
    """A node's texts for one language, under ``folder`` of the run folder (`texts_folder`): line-aligned
    files <code>/<test set>/{source,hypothesis,reference}.txt (one example per line, newlines inside a text
    become spaces) and the original's per-node JSON <code>.json ({test set: {"old_bleu", "bleu", "chrf++",
    "lid", "lid_diff", "predictions", "references"}}, its names: "bleu" is spBLEU, "old_bleu" BLEU 13a).
    Each test set's scores then name where its texts went (`TextsRef`, relative to the run folder); a folder
    that cannot be written costs the files, never the trained node."""
    root = Path(run_dir) / folder
    original = {}
    try:
        for test_set, generated in texts.items():
            out = root / code / test_set
            out.mkdir(parents=True, exist_ok=True)
            for key, name in TEXT_FILES.items():
                _write_text(out / name, "".join(_one_line(t) + "\n" for t in getattr(generated, key)))
            per_set[test_set].texts = TextsRef(str(out.relative_to(run_dir)), socket.gethostname())
            record = per_set[test_set]
            if record.is_smatch:  # text2amr: the original had no such evaluation JSON
                continue
            entry = {ORIGINAL_NAMES[m]: record.value(m) for m in ("bleu_13a", "spbleu", "chrf++", "lid", "lid_diff")}
            original[test_set] = {**entry, "predictions": generated.hypotheses, "references": generated.references}
        if original:
            _write_text(root / f"{code}.json", json.dumps(original, indent=4, ensure_ascii=False) + "\n")
    except OSError as exc:  # a read-only or missing run folder must not cost the trained node
        log.warning("evaluation texts of %s/%s not written: %s", folder, code, exc)
        for test_set in texts:
            per_set[test_set].texts = TextsRef(error=f"not written: {type(exc).__name__}: {exc}")


def _write_text(path: Path, text: str) -> None:
    """Atomically (a temp file in the same folder, then renamed over): a retried node rewrites its files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
