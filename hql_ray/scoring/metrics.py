"""Corpus-level metrics, named as the paper names them: spBLEU, BLEU (13a), chrF++, LID, LID diff, smatch.

- spBLEU (key ``spbleu``; the original's ``bleu``): sacreBLEU BLEU on flores200 SentencePiece pieces,
  from the model file ``eval.spbleu_model``, else sacreBLEU's own cache; never downloaded here
  (`hql-ray fetch-eval-models` puts it in that cache, hql_ray.scoring.eval_models).
- BLEU (13a) (key ``bleu_13a``; the original's ``old_bleu``): sacreBLEU with its default tokenizer.
- chrF++ (key ``chrf++``): chrF with word bigrams (word_order=2).
- LID (key ``lid``): the mean probability, x100, that a fastText language-ID model (GlotLID in the paper)
  gives the target language's label over the hypotheses, every label considered (the original's
  ``compute_lid``); the model is ``eval.lid_model``, else GlotLID when this machine's Hugging Face cache
  has it (`hql-ray fetch-eval-models`). LID diff (``lid_diff``): the hypotheses' LID minus the references' LID; the references'
  LID per test set and language is cached in ``eval.lid_baseline`` (the original's ``-ge`` JSON).
- smatch for text2amr runs.

Scores come from the reference implementations (sacrebleu, fastText, smatch). A metric that cannot be
computed is None with its reason under ``not_computed`` (tables print "not computed: <why>"), never a
silent blank; ``signatures`` say how each score was computed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import random
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import penman
import smatch
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers import tokenizer_spm
from sacrebleu.tokenizers.tokenizer_base import BaseTokenizer

from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.records import TEXT_METRICS

# The names the original train.py wrote in its per-node evaluation JSON, by our score keys.
ORIGINAL_NAMES = {"spbleu": "bleu", "bleu_13a": "old_bleu", "chrf++": "chrf++", "lid": "lid", "lid_diff": "lid_diff"}
FLORES200_VOCAB = 256_000  # pieces of sacreBLEU's flores200 SentencePiece model
_FASTTEXT_MAGIC = 793712314  # first int32 of a fastText .bin file
HF_PREFIX = "hf://"
GLOTLID = "hf://cis-lmu/glotlid/model.bin"  # the paper's LID model
# How to get a metric a run could not compute (said with its reason).
FETCH_HINT = "`hql-ray fetch-eval-models` downloads it; then `hql-ray evaluate RUN` scores a finished run again"


class NotComputed(Exception):
    """A metric that cannot be computed here; ``reason`` says why (shown as "not computed: <reason>")."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class MetricResult:
    """One corpus score with the signature that says how it was computed."""

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


def bleu_13a(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """sacreBLEU with its default 13a tokenizer (the original's ``old_bleu``)."""
    return _score(BLEU(tokenize="13a"), "bleu_13a", hyps, refs)


def chrf_pp(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """chrF++: chrF with word bigrams (word_order=2)."""
    return _score(CHRF(word_order=2), "chrf++", hyps, refs)


# ---------------------------------------------------------------- spBLEU (flores200 SentencePiece)
def sacrebleu_spm_path() -> Path:
    """Where sacreBLEU keeps the flores200 model (it honours $SACREBLEU, default ~/.sacrebleu)."""
    url = tokenizer_spm.SPM_MODELS["flores200"]["url"]
    return Path(tokenizer_spm.SACREBLEU_DIR) / "models" / os.path.basename(url)


def spbleu_model_file(configured: str | None) -> Path:
    """The SentencePiece model spBLEU uses: eval.spbleu_model, else sacreBLEU's cached flores200 model.
    NotComputed when there is none (nothing is downloaded)."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise NotComputed(f"eval.spbleu_model {configured} does not exist here")
        return path
    path = sacrebleu_spm_path()
    if path.is_file():
        return path
    raise NotComputed(f"no flores200 SentencePiece model: eval.spbleu_model is not set and sacreBLEU's cache "
                      f"has none ({path}); {FETCH_HINT}")


class _FileSPMTokenizer(BaseTokenizer):
    """sacreBLEU's SentencePiece tokenizer, loaded from a given file. Its signature is ``flores200`` only
    for a model of flores200's size; any other model is named by its size, so no table claims spBLEU
    for what is not."""

    def __init__(self, path: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as exc:  # a truncated or foreign file
            raise NotComputed(f"cannot load SentencePiece model {path}: {type(exc).__name__}: {exc}") from None
        vocab = self.sp.GetPieceSize()
        self.name = "flores200" if vocab == FLORES200_VOCAB else f"spm-vocab{vocab}"
        self._cache: dict[str, str] = {}

    def signature(self) -> str:
        return self.name

    def __call__(self, line: str) -> str:
        out = self._cache.get(line)
        if out is None:
            if len(self._cache) >= 1 << 16:  # as sacreBLEU's own (an lru_cache of 2**16 lines), but simpler
                self._cache.clear()
            out = self._cache[line] = " ".join(self.sp.EncodeAsPieces(line))
        return out


def spm_model_name(path: Path) -> str:
    """Its name in signatures: flores200 for sacreBLEU's flores200 model, else spm-vocab<N>; NotComputed if it
    does not load."""
    return _FileSPMTokenizer(path).name


_spm_lock = threading.Lock()
_spm_metrics: dict[str, BLEU] = {}


def _spbleu_metric(path: Path) -> BLEU:
    key = str(path.resolve())
    with _spm_lock:
        if key not in _spm_metrics:
            metric = BLEU(tokenize="none")
            metric.tokenizer = _FileSPMTokenizer(path)
            metric.tokenizer_signature = metric.tokenizer.signature()
            _spm_metrics[key] = metric
        return _spm_metrics[key]


def spbleu(hyps: Sequence[str], refs: Sequence[str], model: str | None = None) -> MetricResult:
    """spBLEU: BLEU on flores200 SentencePiece pieces (the original's ``bleu``). ``model``: the SPM file
    (eval.spbleu_model); None = sacreBLEU's cache. NotComputed where no model is found."""
    _check_pair(hyps, refs)
    return _score(_spbleu_metric(spbleu_model_file(model)), "spbleu", hyps, refs)


# ---------------------------------------------------------------- LID (fastText, GlotLID)
def parse_hf_spec(spec: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo[@revision]/path/in/repo`` -> (repo id, file, revision)."""
    rest = spec[len(HF_PREFIX):]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"eval.lid_model {spec!r}: expected hf://owner/repo/file (e.g. hf://cis-lmu/glotlid/model.bin)")
    repo, revision = parts[1], None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return f"{parts[0]}/{repo}", "/".join(parts[2:]), revision


def lid_model_file(spec: str) -> Path:
    """The fastText model file of eval.lid_model: a local path, or hf://owner/repo/file downloaded (once,
    into the Hugging Face cache) with huggingface_hub on the machine that evaluates."""
    if spec.startswith(HF_PREFIX):
        from huggingface_hub import hf_hub_download

        repo_id, filename, revision = parse_hf_spec(spec)
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
        except Exception as exc:  # offline, no such repo or file
            raise NotComputed(f"cannot fetch LID model {spec}: {type(exc).__name__}: {exc}") from None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise NotComputed(f"LID model {spec} does not exist here")
    return path


def cached_hf_file(spec: str) -> Path | None:
    """The file of an hf://owner/repo/file reference when this machine's Hugging Face cache has it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename, revision = parse_hf_spec(spec)
    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def effective_lid_model(configured: str | None) -> str | None:
    """The LID model a run uses: eval.lid_model, else GlotLID from this machine's Hugging Face cache (put
    there by `hql-ray fetch-eval-models`; never downloaded here), else None (LID not computed)."""
    if configured:
        return configured
    found = cached_hf_file(GLOTLID)
    return str(found) if found is not None else None


NO_LID_MODEL = (f"no LID model: eval.lid_model is not set and GlotLID ({GLOTLID}) is not in this machine's "
                f"Hugging Face cache; {FETCH_HINT}")


_lid_lock = threading.Lock()
_lid_models: dict[str, tuple[object, frozenset] | NotComputed] = {}


def _load_lid(spec: str) -> tuple[object, frozenset]:
    import fasttext

    path = lid_model_file(spec)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # fastText's load_model warning
            model = fasttext.load_model(str(path))
    except Exception as exc:
        raise NotComputed(f"cannot load LID model {path}: {type(exc).__name__}: {exc}") from None
    return model, frozenset(model.get_labels())


def load_lid_model(spec: str) -> tuple[object, frozenset]:
    """(model, its labels) of eval.lid_model, loaded once per process (GlotLID is 1.6 GB); a model that
    cannot be had is not retried in this process (one download timeout, not one per test set)."""
    with _lid_lock:
        if spec not in _lid_models:
            try:
                _lid_models[spec] = _load_lid(spec)
            except NotComputed as exc:
                _lid_models[spec] = exc
        found = _lid_models[spec]
    if isinstance(found, NotComputed):
        raise NotComputed(found.reason)
    return found


def lid_score(model, texts: Sequence[str], code: str, labels: frozenset | None = None) -> float:
    """Mean probability x100 of ``__label__<code>`` over the texts, every label of the model considered
    (the original's compute_lid, k=3000 there: all of GlotLID's labels). Newlines become spaces (fastText
    reads one line per text). NotComputed when the model has no such label."""
    if not texts:
        raise ValueError("no texts to identify")
    label = f"__label__{code}"
    labels = labels if labels is not None else frozenset(model.get_labels())
    if label not in labels:
        raise NotComputed(f"the LID model has no label {label}")
    lines = [" ".join(t.splitlines()) for t in texts]
    predicted, probs = model.predict(lines, k=-1, threshold=0.0)
    total = 0.0
    for names, values in zip(predicted, probs):
        names = list(names)
        total += float(values[names.index(label)]) if label in names else 0.0
    return total / len(lines) * 100.0


def lid_signature(spec: str, labels: frozenset) -> str:
    return f"fasttext|model:{spec}|labels:{len(labels)}|k:all|mean_prob_x100"


# ---------------------------------------------------------------- all text metrics of a test set
def text_scores(hyps: Sequence[str], refs: Sequence[str], *, code: str | None = None,
                spbleu_model: str | None = None, lid_model: str | None = None,
                reference_lid: float | None = None) -> dict:
    """spBLEU, BLEU (13a), chrF++, LID and LID diff of one language's test set, as a plain dict:
    {metric: score or None, "reference_lid", "signatures": {metric: signature}, "not_computed":
    {metric: why}}. ``reference_lid``: the references' LID from the baseline file; None = computed here."""
    _check_pair(hyps, refs)
    b, c = bleu_13a(hyps, refs), chrf_pp(hyps, refs)
    out: dict = {m: None for m in TEXT_METRICS}
    out.update({"bleu_13a": b.score, "chrf++": c.score, "reference_lid": None})
    signatures = {"bleu_13a": b.signature, "chrf++": c.signature}
    not_computed: dict[str, str] = {}
    try:
        s = spbleu(hyps, refs, spbleu_model)
        out["spbleu"], signatures["spbleu"] = s.score, s.signature
    except NotComputed as exc:
        not_computed["spbleu"] = exc.reason
    lid_model = effective_lid_model(lid_model) if code is not None else None
    if lid_model is None:
        not_computed["lid"] = not_computed["lid_diff"] = NO_LID_MODEL if code is not None else "no language code"
    else:
        try:
            model, labels = load_lid_model(lid_model)
            out["lid"] = lid_score(model, hyps, code, labels)
            signatures["lid"] = lid_signature(lid_model, labels)
            ref = reference_lid if reference_lid is not None else lid_score(model, refs, code, labels)
            out["reference_lid"], out["lid_diff"] = ref, out["lid"] - ref
        except NotComputed as exc:
            not_computed["lid"] = not_computed["lid_diff"] = exc.reason
    out["signatures"] = signatures
    out["not_computed"] = not_computed
    return out


# ---------------------------------------------------------------- the references' LID (-ge JSON)
def read_lid_baseline(path: str | Path) -> dict[str, dict[str, float]]:
    """{test set: {code: references' LID}} from the original's -ge JSON
    (``{"flores": {"lid": {code: value}}, "ldc2020t07": {"lid": {...}}}``); {} when the file is absent."""
    path = Path(path).expanduser()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"LID baseline is not readable JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise InputError("LID baseline must be a JSON object {test set: {\"lid\": {code: value}}}", path=path)
    out: dict[str, dict[str, float]] = {}
    for test_set, entry in data.items():
        lids = entry.get("lid") if isinstance(entry, dict) else None
        if not isinstance(lids, dict):
            raise InputError(f"LID baseline: {test_set!r} has no \"lid\" object {{code: value}}", path=path)
        for code, value in lids.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"LID baseline: {test_set}.lid.{code} is not a number: {value!r}", path=path)
        out[test_set] = {code: float(v) for code, v in lids.items()}
    return out


def merge_lid_baseline(path: str | Path, values: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add the references' LIDs not in the file yet (values already there win, as in the original) and
    rewrite it atomically, under a lock so that runs sharing the file do not lose each other's values.
    Keys of the file this does not know are kept. Returns the merged {test set: {code: value}}."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        read_lid_baseline(path)  # refuse to overwrite a file that is not a baseline
        raw = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        added = False
        for test_set, lids in values.items():
            known = raw.setdefault(test_set, {}).setdefault("lid", {})
            for code, value in lids.items():
                if code not in known and value is not None:
                    known[code] = float(value)
                    added = True
        if added:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(raw, f, indent=4)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    return read_lid_baseline(path)


# ---------------------------------------------------------------- preflight
def looks_like_fasttext(path: Path) -> bool:
    """Whether the file starts as a fastText .bin model does."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<i", head)[0] == _FASTTEXT_MAGIC


def _check_spbleu_model(configured: str | None) -> list[str]:
    if configured is None:
        try:
            path = spbleu_model_file(None)
        except NotComputed as exc:
            return [f"spBLEU: not computed: {exc.reason}"]
    else:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ConfigError(f"eval.spbleu_model: no such file: {configured}")
    try:
        name = _FileSPMTokenizer(path).name
    except NotComputed as exc:
        raise ConfigError(f"eval.spbleu_model: {exc.reason}") from None
    if name != "flores200":
        return [f"spBLEU: {path} is not the flores200 model ({name}); its BLEU is labelled tok:{name}, "
                "not comparable with the paper's spBLEU"]
    return []


def _check_lid_model(spec: str | None) -> list[str]:
    if spec is None:
        if effective_lid_model(None) is not None:
            return []  # GlotLID, from this machine's Hugging Face cache
        return [f"LID and LID diff: not computed: {NO_LID_MODEL}"]
    if spec.startswith(HF_PREFIX):
        repo_id, filename, revision = parse_hf_spec(spec)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            if not looks_like_fasttext(Path(cached)):
                raise ConfigError(f"eval.lid_model {spec}: the cached file {cached} is not a fastText model")
            return []
        return [f"LID: {spec} is not in this machine's Hugging Face cache: each evaluating worker downloads it "
                "at its first evaluation (it needs the network there)"]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"eval.lid_model: no such file: {spec}")
    if not looks_like_fasttext(path):
        raise ConfigError(f"eval.lid_model: {spec} is not a fastText model (.bin)")
    return []


def check_eval_files(cfg) -> list[str]:
    """The driver's check of the evaluation files before anything starts: ConfigError for a given path
    that does not exist or does not load; otherwise notes on what will not be computed, and why."""
    ev = cfg.eval
    if not ev.generate:
        return []
    if cfg.data.direction != "amr2text":
        return []  # text2amr runs are scored with smatch, which needs no file
    notes = _check_spbleu_model(ev.spbleu_model) + _check_lid_model(ev.lid_model)
    if ev.lid_baseline:
        try:
            baseline = read_lid_baseline(ev.lid_baseline)
        except InputError as exc:
            raise ConfigError(f"eval.lid_baseline: {exc.problem}", path=exc.path) from None
        if effective_lid_model(ev.lid_model) is None:
            notes.append(f"eval.lid_baseline {ev.lid_baseline} is not used: no LID model")
        elif not baseline:
            notes.append(f"eval.lid_baseline {ev.lid_baseline} does not exist yet: the references' LID is "
                         "computed by the workers and written there at the end of the run")
    return notes


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
