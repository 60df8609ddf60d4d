"""From corpus examples to tokenized datasets: prompts and a per-language tokenization cache.

Batches are made from these by `hql_ray.data.batching`.

A node trains on the union of its languages' data, and every language appears at every level of the
tree, so each (language, split) is tokenized once and cached as Arrow (`datasets.save_to_disk`);
parent, children and later runs load it. The cache key covers the source files (size, mtime), the
tokenizer and every setting that changes the tokens, so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import datasets

from hql_ray.data import corpus
from hql_ray.settings.config import LinearizeOptions
from hql_ray.settings.records import Progress, Task

CACHE_VERSION = 2
_COUNTS = ("skipped", "clipped_source", "clipped_target")  # metadata summed over a node's languages


class StepProgress:
    """A long step's progress (tokenizing a language, generating for a test set) as live-progress updates
    (a `Progress` with its `Task`) for `NodeContext.progress`.

    Sends at most one update per `min_interval` s, except the first and the last of a task (done == total),
    so a per-batch callback costs the board a few calls a second at most. `send` None: nothing is sent."""

    def __init__(self, send: Callable[[Progress], None] | None, node_id: str | None = None,
                 min_interval: float = 0.5):
        self.send = send
        self.node_id = node_id
        self.min_interval = min_interval
        self._last = 0.0
        self._task_key: Task | None = None

    def __call__(self, task: Task) -> None:
        if self.send is None:
            return
        now = time.monotonic()
        key = dataclasses.replace(task, done=None)
        finished = task.done is not None and task.done == task.total
        if not (key != self._task_key or finished) and now - self._last < self.min_interval:
            return
        self._task_key, self._last = key, now
        try:
            self.send(Progress(node=self.node_id or "", phase=task.phase, task=task))
        except Exception:  # noqa: BLE001 - progress is best effort, never the reason a node fails
            pass


def as_step_progress(progress) -> StepProgress:
    """A StepProgress from what a caller passes: one already, a `ctx.progress`-like callable, or None."""
    return progress if isinstance(progress, StepProgress) else StepProgress(progress)


def make_pair(direction: str, language_name: str, amr: str, text: str) -> tuple[str, str]:
    """(model input, target) for one example; the prompt format is the original's."""
    if direction == "amr2text":
        return f"Translate to {language_name}: {amr}", text
    if direction == "text2amr":
        return f"Parse from {language_name}: {text}", amr
    raise ValueError(f"unknown direction {direction!r}")


@dataclass(frozen=True)
class DataSettings:
    """Everything that decides which examples a language contributes and how they are tokenized."""

    data_dir: str
    direction: str = "amr2text"
    corpora: tuple[str, ...] | None = None  # training corpora; None = the data's (corpus.select_corpora)
    max_source_length: int | None = None  # None = no truncation
    max_target_length: int | None = None
    # split -> max examples per language: "train" per corpus, "validation" (sample mode) and "test" per language
    caps: dict = field(default_factory=dict)
    seed: int = 0
    skip_bad: bool = False
    linearize: LinearizeOptions = field(default_factory=LinearizeOptions)
    # "first": each (corpus, language) of a node gives its first validation_size // languages // corpora
    # validation rows (the original); "sample": a seeded sample of caps["validation"] from the union.
    validation: str = "first"
    validation_size: int = 5000

    @classmethod
    def from_config(cls, cfg) -> "DataSettings":
        d = cfg.data
        return cls(
            data_dir=d.dir,
            direction=d.direction,
            corpora=tuple(d.corpora) if d.corpora else None,
            max_source_length=d.max_source_length,
            max_target_length=d.max_target_length,
            caps={
                "train": d.max_train_per_corpus,
                "validation": d.max_validation_per_language,
                "test": d.max_test_per_language,
            },
            seed=cfg.run.seed,
            skip_bad=d.skip_bad,
            linearize=d.linearize,
            validation=d.validation,
            validation_size=d.validation_size,
        )

    def used_corpora(self) -> list[str]:
        """The training corpora (named, or the data folder's); an unknown one is an InputError."""
        return corpus.select_corpora(self.data_dir, list(self.corpora) if self.corpora else None)

    def validation_rows(self, n_languages: int) -> int | None:
        """Validation rows each (corpus, language) of a node with n_languages gives ("first"), else None."""
        if self.validation != "first":
            return None
        return self.validation_size // max(n_languages, 1) // max(len(self.used_corpora()), 1)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a tokenizer well enough for the cache key (class, name, vocabulary size, and for a local
    folder its files' sizes and mtimes: a tokenizer retrained in the same folder gets a new key, C14)."""
    vocab = len(tokenizer)
    name = getattr(tokenizer, "name_or_path", "") or ""
    stamps = ""
    if name and Path(name).is_dir():
        files = sorted(p for p in Path(name).iterdir()
                       if p.is_file() and ("token" in p.name or p.suffix == ".model" or p.name == "vocab.json"))
        stamps = ":" + ",".join(f"{p.name}={p.stat().st_size}@{p.stat().st_mtime_ns}" for p in files)
    return f"{type(tokenizer).__name__}:{name}:{vocab}{stamps}"


def _source_files(settings: DataSettings, code: str, split: str) -> list[Path]:
    return [corpus.corpus_file(settings.data_dir, name, code, split) for name in settings.used_corpora()]


def _file_stamps(paths: list[Path]) -> list:
    out = []
    for path in paths:
        st = path.stat() if path.exists() else None
        out.append([str(path.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
    return out


def _key(payload: dict, settings: DataSettings, tokenizer) -> str:
    payload = {
        "version": CACHE_VERSION,
        **payload,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": {
            "direction": settings.direction,
            "corpora": settings.corpora,
            "max_source_length": settings.max_source_length,
            "max_target_length": settings.max_target_length,
            "seed": settings.seed,
            "skip_bad": settings.skip_bad,
            "linearize": asdict(settings.linearize),
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(settings: DataSettings, code: str, name: str, split: str, tokenizer,
              validation_rows: int | None = None) -> str:
    payload = {"code": code, "name": name, "split": split, "corpora_used": settings.used_corpora(),
               "files": _file_stamps(_source_files(settings, code, split)), "cap": settings.caps.get(split)}
    if split == "validation":
        payload["validation"] = [settings.validation, validation_rows]
    return _key(payload, settings, tokenizer)


def _tokenize_examples(settings: DataSettings, examples: list[corpus.Example], code: str, name: str,
                       tokenizer, meta: dict) -> datasets.Dataset:
    """Prompt and tokenize examples; with a token limit, the clipped examples are counted in the metadata."""
    pairs = [make_pair(settings.direction, name, ex.amr, ex.text) for ex in examples]
    sources = [p[0] for p in pairs]
    targets = [p[1] for p in pairs]
    inputs, clipped_source = _tokenize(tokenizer, sources, settings.max_source_length, target=False)
    labels, clipped_target = _tokenize(tokenizer, targets, settings.max_target_length, target=True)
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": inputs,
            "labels": labels,
            "source": sources,
            "target": targets,
            "lang": [code] * len(sources),
            "origin": [ex.origin for ex in examples],
        },
        features=datasets.Features(
            {
                "input_ids": datasets.Sequence(datasets.Value("int32")),
                "labels": datasets.Sequence(datasets.Value("int32")),
                "source": datasets.Value("string"),
                "target": datasets.Value("string"),
                "lang": datasets.Value("string"),
                "origin": datasets.Value("string"),
            }
        ),
    )
    ds.info.description = json.dumps({**meta, "clipped_source": clipped_source, "clipped_target": clipped_target})
    return ds


def _tokenize(tokenizer, texts: list[str], limit: int | None, target: bool) -> tuple[list[list[int]], int]:
    """Token ids without truncation, or cut at `limit` (the tokenizer's own truncation, so EOS stays) and
    the number of texts that were longer."""
    if not texts:
        return [], 0
    kwargs = {"text_target": texts} if target else {"text": texts}
    ids = tokenizer(**kwargs)["input_ids"]
    if limit is None:
        return ids, 0
    long = [i for i, seq in enumerate(ids) if len(seq) > limit]
    if long:
        kwargs = {"text_target": [texts[i] for i in long]} if target else {"text": [texts[i] for i in long]}
        for i, seq in zip(long, tokenizer(**kwargs, max_length=limit, truncation=True)["input_ids"]):
            ids[i] = seq
    return ids, len(long)


def tokenize_language(settings: DataSettings, code: str, name: str, split: str, tokenizer,
                      validation_rows: int | None = None) -> datasets.Dataset:
    """Read, prompt and tokenize one language's split (no cache).

    train: each corpus capped at caps["train"] (seeded); validation: each corpus's first
    `validation_rows` rows ("first"), or a seeded sample of caps["validation"] from the union ("sample");
    test: the union, capped at caps["test"]."""
    first = validation_rows if split == "validation" and settings.validation == "first" else None
    per_corpus = settings.caps.get("train") if split == "train" else None
    union = None if split == "train" or first is not None else settings.caps.get(split)
    examples, skipped = corpus.load_examples(
        settings.data_dir,
        code,
        split,
        corpora=list(settings.corpora) if settings.corpora else None,
        cap=union,
        seed=settings.seed,
        options=settings.linearize,
        skip_bad=settings.skip_bad,
        cap_per_corpus=per_corpus,
        first_per_corpus=first,
    )
    return _tokenize_examples(settings, examples, code, name, tokenizer, {"skipped": skipped})


def _cached(target: Path, build) -> datasets.Dataset:
    """Load the Arrow dataset at `target`, building and saving it first if needed (atomic rename)."""
    if not (target / "dataset_info.json").exists():
        ds = build()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name.split('-')[0]}-", dir=target.parent))
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, target)  # atomic: a concurrent builder either wins or finds ours
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def language_dataset(
    settings: DataSettings, code: str, name: str, split: str, tokenizer, cache_dir: str | Path,
    validation_rows: int | None = None,
) -> datasets.Dataset:
    """Cached tokenized split of one language; built once, then loaded (memory-mapped Arrow).

    `validation_rows`: for split "validation" with settings.validation "first", the rows each corpus
    gives (node_dataset computes it from the node's languages); None there = every row."""
    key = cache_key(settings, code, name, split, tokenizer, validation_rows)
    target = Path(cache_dir) / "tokenized" / code / f"{split}-{key}"
    return _cached(target, lambda: tokenize_language(settings, code, name, split, tokenizer, validation_rows))


def node_dataset(
    settings: DataSettings, languages: list[tuple[str, str]], split: str, tokenizer, cache_dir: str | Path,
    progress: Callable[[dict], None] | StepProgress | None = None,
) -> datasets.Dataset:
    """Union of the languages' datasets for one split (languages = [(code, display name), ...]).

    Validation "first" (the original): each corpus of each language gives its first
    validation_size // len(languages) // corpora rows. `progress` (e.g. `ctx.progress`) hears each
    language as it is tokenized, or loaded from the cache: phase "prepare", task "tokenize"."""
    rows = settings.validation_rows(len(languages)) if split == "validation" else None
    steps = as_step_progress(progress)
    parts = []
    for i, (code, name) in enumerate(languages, 1):
        key = cache_key(settings, code, name, split, tokenizer, rows)
        cached = (Path(cache_dir) / "tokenized" / code / f"{split}-{key}" / "dataset_info.json").exists()
        steps(Task("tokenize", code, i, len(languages), split=split, cached=cached))
        parts.append(language_dataset(settings, code, name, split, tokenizer, cache_dir, rows))
    if len(parts) == 1:
        return parts[0]
    ds = datasets.concatenate_datasets(parts)
    metas = [_metadata(part) for part in parts]  # summed: concatenation would keep the text of each
    ds.info.description = json.dumps({k: sum(int(m.get(k, 0)) for m in metas) for k in _COUNTS})
    return ds


def test_set_dataset(
    settings: DataSettings, code: str, name: str, test_set: str, tokenizer, cache_dir: str | Path
) -> datasets.Dataset | None:
    """One test set of one language ("flores", "ldc2020t07", "amr3"), tokenized and cached like
    language_dataset (same columns), capped at caps["test"] (seeded); None when the language has no such
    test set (e.g. ldc2020t07 for fra_Latn, or no flores test file)."""
    files = corpus.files_of_test_set(settings.data_dir, code, test_set)
    if files is None:
        return None
    payload = {"code": code, "name": name, "test_set": test_set, "files": _file_stamps(files),
               "cap": settings.caps.get("test")}
    key = _key(payload, settings, tokenizer)
    target = Path(cache_dir) / "tokenized" / code / f"test_{test_set}-{key}"

    def build() -> datasets.Dataset:
        examples = corpus.load_test_set(settings.data_dir, code, test_set, settings.linearize, settings.skip_bad)
        examples = corpus.cap_sample(examples or [], settings.caps.get("test"), settings.seed)
        return _tokenize_examples(settings, examples, code, name, tokenizer, {"test_set": test_set})

    return _cached(target, build)


def _metadata(ds: datasets.Dataset) -> dict:
    try:
        return json.loads(ds.info.description or "{}")
    except (ValueError, AttributeError):
        return {}


def skipped_count(ds: datasets.Dataset) -> int:
    return int(_metadata(ds).get("skipped", 0))


def clipped_counts(ds: datasets.Dataset) -> dict[str, int]:
    """Examples whose source / target was cut at data.max_source_length / max_target_length (0 without limits).

    node_dataset sums them over its languages."""
    meta = _metadata(ds)
    return {"source": int(meta.get("clipped_source", 0)), "target": int(meta.get("clipped_target", 0))}


# ---- sizes for batching ----------------------------------------------------------------------------
def example_lengths(ds: datasets.Dataset) -> list[int]:
    """Cost of an example for padding purposes: the longer of its source and target.

    Read as Arrow list lengths (no row is turned into Python lists): ~3 ms for 100K rows where the
    per-row loop took ~10 s (review C15)."""
    import numpy as np
    import pyarrow.compute as pc

    if len(ds) == 0:
        return []
    table = ds.with_format("arrow")[:]  # selections and shuffles applied
    src = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    tgt = pc.list_value_length(table.column("labels")).to_numpy(zero_copy_only=False)
    return np.maximum(src, tgt).tolist()
