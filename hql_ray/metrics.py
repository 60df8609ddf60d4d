"""Corpus-level text and graph metrics: sacreBLEU, chrF++, spBLEU and smatch.

Scores come from the reference implementations (sacrebleu, smatch) so that numbers match the
papers' tools; this module only makes them safe to call from a training run: signatures kept,
no surprise downloads (spBLEU's SentencePiece model is used only when cached), invalid predicted
graphs scored instead of crashing smatch, and smatch's hill-climbing made reproducible.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import penman
import smatch
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers import tokenizer_spm

from hql_ray.errors import InputError

log = logging.getLogger(__name__)

SPBLEU_ENV = "HQL_RAY_SPBLEU"
"""0/off: never compute spBLEU; download: fetch the flores200 model if missing; else cached only."""

_SPM_KEY = "flores200"
_DOWNLOAD_TIMEOUT_S = 10.0


@dataclass
class MetricResult:
    """One corpus score with the sacrebleu signature that says how it was computed."""

    name: str
    score: float
    signature: str


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    """Refuse mismatched or empty inputs: a silent zip would score the wrong pairs."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: they must pair up one to one")
    if not hyps:
        raise ValueError("no hypotheses to score (0 hypotheses, 0 references)")


def _score(metric, name: str, hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    _check_pair(hyps, refs)
    result = metric.corpus_score(list(hyps), [list(refs)])
    # The signature exists only after scoring (sacrebleu fills in nrefs then).
    return MetricResult(name=name, score=float(result.score), signature=str(metric.get_signature()))


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """sacreBLEU with its default 13a tokenizer (one reference per hypothesis)."""
    return _score(BLEU(tokenize="13a"), "bleu", hyps, refs)


def chrf_pp(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """chrF++: chrF with word bigrams (word_order=2)."""
    return _score(CHRF(word_order=2), "chrf++", hyps, refs)


# ---------------------------------------------------------------- spBLEU (flores200 SentencePiece)

_spbleu_lock = threading.Lock()
_spbleu_state: dict[str, object] = {}  # "note": why unavailable (logged once), "metric": cached BLEU


def _spm_model_path() -> Path:
    """Where sacrebleu looks for the flores200 model (it honours $SACREBLEU, default ~/.sacrebleu)."""
    url = tokenizer_spm.SPM_MODELS[_SPM_KEY]["url"]
    return Path(tokenizer_spm.SACREBLEU_DIR) / "models" / os.path.basename(url)


def _download_spm_model(path: Path) -> None:
    """Fetch the model with a short timeout (sacrebleu's own download has none), atomically."""
    url = tokenizer_spm.SPM_MODELS[_SPM_KEY]["url"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 16):
                out.write(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _spbleu_metric() -> BLEU | None:
    """The flores200 BLEU object, or None with a note logged once per process."""
    with _spbleu_lock:
        if "metric" in _spbleu_state:
            return _spbleu_state["metric"]  # type: ignore[return-value]
        if "note" in _spbleu_state:
            return None
        mode = os.environ.get(SPBLEU_ENV, "").strip().lower()
        path = _spm_model_path()
        note = None
        if mode in ("0", "off", "false", "no"):
            note = f"spBLEU disabled by {SPBLEU_ENV}={os.environ.get(SPBLEU_ENV)}"
        elif not path.exists() and mode == "download":
            try:
                _download_spm_model(path)
            except Exception as exc:  # no network, proxy, timeout: all mean "not available"
                note = (f"spBLEU unavailable: flores200 SentencePiece model not cached ({path}) "
                        f"and the download failed: {type(exc).__name__}: {exc}")
        elif not path.exists():
            note = (f"spBLEU unavailable: flores200 SentencePiece model not cached ({path}; "
                    f"set {SPBLEU_ENV}=download to fetch it, or copy it there)")
        if note is None:
            try:
                metric = BLEU(tokenize=_SPM_KEY)
            except Exception as exc:  # a truncated or corrupt model file
                note = f"spBLEU unavailable: cannot load {path}: {type(exc).__name__}: {exc}"
            else:
                _spbleu_state["metric"] = metric
                return metric
        _spbleu_state["note"] = note
        log.warning(note)
        return None


def spbleu_note() -> str | None:
    """Why spBLEU is unavailable in this process (None if it is available or not tried yet)."""
    return _spbleu_state.get("note")  # type: ignore[return-value]


def reset_spbleu() -> None:
    """Forget the cached availability decision (after the env var or the cache changed)."""
    with _spbleu_lock:
        _spbleu_state.clear()


def spbleu(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult | None:
    """spBLEU (BLEU on flores200 SentencePiece pieces), or None where the model is not available."""
    _check_pair(hyps, refs)
    metric = _spbleu_metric()
    if metric is None:
        return None
    return _score(metric, "spbleu", hyps, refs)


def text_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """All text metrics as a plain (JSON-serialisable) dict for manifests and Ray."""
    b, c, s = bleu(hyps, refs), chrf_pp(hyps, refs), spbleu(hyps, refs)
    return {
        "bleu": b.score,
        "chrf++": c.score,
        "spbleu": s.score if s is not None else None,
        "signatures": {"bleu": b.signature, "chrf++": c.signature,
                       "spbleu": s.signature if s is not None else None},
    }


# ---------------------------------------------------------------- smatch

_smatch_lock = threading.Lock()  # smatch keeps its state in module globals


class _FixedSeedRandom(random.Random):
    """A Random whose argument-less seed() is a no-op.

    smatch calls ``random.seed()`` (OS entropy) before every restart, so its hill-climbing gives
    different numbers from run to run; swapping this in as ``smatch.random`` pins them.
    """

    def seed(self, a=None, version=2):  # noqa: D102
        if a is None and getattr(self, "_seeded", False):
            return
        super().seed(a, version)
        self._seeded = True


@contextlib.contextmanager
def _smatch_session(restarts: int) -> Iterator[None]:
    """Silence smatch's prints to stderr and set its restart count, restoring both afterwards."""
    smatch_amr = smatch.amr  # smatch's own AMR parser module (a top-level "amr" next to it)
    saved = (smatch.iteration_num, smatch.random, smatch.ERROR_LOG, smatch.DEBUG_LOG,
             smatch_amr.ERROR_LOG, smatch_amr.DEBUG_LOG)
    sink = io.StringIO()
    with _smatch_lock:
        smatch.iteration_num = restarts + 1
        smatch.ERROR_LOG = smatch.DEBUG_LOG = smatch_amr.ERROR_LOG = smatch_amr.DEBUG_LOG = sink
        try:
            yield
        finally:
            (smatch.iteration_num, smatch.random, smatch.ERROR_LOG, smatch.DEBUG_LOG,
             smatch_amr.ERROR_LOG, smatch_amr.DEBUG_LOG) = saved
            smatch.match_triple_dict.clear()


def single_line_amr(text: str) -> str | None:
    """The graph as one PENMAN line, or None if it is not a well-formed AMR graph.

    penman accepts things smatch's parser crashes on (``()``, a node without a concept, a variable
    declared twice), so those are refused here too.
    """
    if not text or not text.strip():
        return None
    try:
        graph = penman.decode(text)
        if graph.top is None:
            return None
        seen: set[str] = set()
        for var, _, concept in graph.instances():
            if var is None or concept is None or var in seen:
                return None
            seen.add(var)
        if not seen:
            return None
        graph.metadata.clear()
        return penman.encode(graph, indent=None)
    except Exception:  # penman's DecodeError, LayoutError, ...: all mean "not a graph"
        return None


def _triple_count(line: str) -> int | None:
    """Triples smatch counts for one graph (instances + attributes incl. TOP + relations)."""
    try:
        graph = smatch.amr.AMR.parse_AMR_line(line)
        if graph is None:
            return None
        graph.rename_node("b")
        return sum(len(t) for t in graph.get_triples())
    except Exception:
        return None


def smatch_scores(pred_amrs: Sequence[str], gold_amrs: Sequence[str], *,
                  restarts: int = 4, seed: int = 0) -> dict:
    """Corpus smatch (triple counts summed over pairs, then P/R/F, as the smatch tool does).

    An unparseable or empty prediction counts as an empty graph: 0 matched, 0 test triples, its
    gold triples still counted. Each pair is scored with a fresh RNG seeded with ``seed`` so a
    pair's score does not depend on its position. ``restarts`` as smatch's ``-r`` (default 4).
    Scores are fractions in [0, 1], like the smatch tool prints them.
    """
    if len(pred_amrs) != len(gold_amrs):
        raise ValueError(f"{len(pred_amrs)} predicted AMRs but {len(gold_amrs)} gold AMRs: "
                         "they must pair up one to one")
    if not pred_amrs:
        raise ValueError("no AMRs to score (0 predicted, 0 gold)")
    total_match = total_test = total_gold = 0
    valid = 0
    with _smatch_session(restarts):
        for i, (pred, gold) in enumerate(zip(pred_amrs, gold_amrs)):
            gold_line = single_line_amr(gold)
            gold_count = _triple_count(gold_line) if gold_line is not None else None
            if gold_count is None:
                raise InputError(f"gold AMR #{i + 1} is not a well-formed AMR graph: {gold[:80]!r}",
                                 line=i + 1)
            pred_line = single_line_amr(pred)
            match = test = 0
            if pred_line is not None:
                smatch.random = _FixedSeedRandom(seed)
                smatch.match_triple_dict.clear()
                try:
                    match, test, gold_count = smatch.get_amr_match(pred_line, gold_line)
                    valid += 1
                except Exception:  # smatch's parser refused what penman accepted
                    match = test = 0
                finally:
                    smatch.match_triple_dict.clear()
            total_match += match
            total_test += test
            total_gold += gold_count
    precision = total_match / total_test if total_test else 0.0
    recall = total_match / total_gold if total_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pred_amrs)
    return {"n": n, "precision": precision, "recall": recall, "f1": f1, "valid_share": valid / n,
            "match": total_match, "test": total_test, "gold": total_gold}
