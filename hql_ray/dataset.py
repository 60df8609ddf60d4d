"""From corpus examples to tokenized datasets: prompts and a per-language tokenization cache.

Batches are made from these by `hql_ray.batching`.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from hql_ray import corpus
from hql_ray.amr import LinearizeOptions

CACHE_VERSION = 1


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
    corpora: tuple[str, ...] | None = None
    max_source_length: int | None = None  # None = no truncation
    max_target_length: int | None = None
    caps: dict = field(default_factory=dict)  # split -> max examples per language (None = all)
    seed: int = 0
    skip_bad: bool = False
    linearize: LinearizeOptions = field(default_factory=LinearizeOptions)

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
        )


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies a tokenizer well enough for the cache key (class, name, vocabulary size)."""
    vocab = len(tokenizer)
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}:{name}:{vocab}"


def _source_files(settings: DataSettings, code: str, split: str) -> list[Path]:
    names = corpus.discover_corpora(settings.data_dir)
    if settings.corpora:
        names = [n for n in names if n in settings.corpora]
    return [corpus.corpus_file(settings.data_dir, name, code, split) for name in names]


def cache_key(settings: DataSettings, code: str, name: str, split: str, tokenizer) -> str:
    files = []
    for path in _source_files(settings, code, split):
        st = path.stat() if path.exists() else None
        files.append([str(path.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
    payload = {
        "version": CACHE_VERSION,
        "code": code,
        "name": name,
        "split": split,
        "files": files,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": {
            "direction": settings.direction,
            "corpora": settings.corpora,
            "max_source_length": settings.max_source_length,
            "max_target_length": settings.max_target_length,
            "cap": settings.caps.get(split),
            "seed": settings.seed,
            "skip_bad": settings.skip_bad,
            "linearize": asdict(settings.linearize),
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def tokenize_language(settings: DataSettings, code: str, name: str, split: str, tokenizer) -> datasets.Dataset:
    """Read, prompt and tokenize one language's split (no cache)."""
    examples, skipped = corpus.load_examples(
        settings.data_dir,
        code,
        split,
        corpora=list(settings.corpora) if settings.corpora else None,
        cap=settings.caps.get(split),
        seed=settings.seed,
        options=settings.linearize,
        skip_bad=settings.skip_bad,
    )
    pairs = [make_pair(settings.direction, name, ex.amr, ex.text) for ex in examples]
    sources = [p[0] for p in pairs]
    targets = [p[1] for p in pairs]
    src_cut, tgt_cut = settings.max_source_length, settings.max_target_length
    enc = tokenizer(sources, max_length=src_cut, truncation=src_cut is not None) if sources else {"input_ids": []}
    lab = (tokenizer(text_target=targets, max_length=tgt_cut, truncation=tgt_cut is not None) if targets
           else {"input_ids": []})
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "labels": lab["input_ids"],
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
    ds.info.description = json.dumps({"skipped": skipped})
    return ds


def language_dataset(
    settings: DataSettings, code: str, name: str, split: str, tokenizer, cache_dir: str | Path
) -> datasets.Dataset:
    """Cached tokenized split of one language; built once, then loaded (memory-mapped Arrow)."""
    key = cache_key(settings, code, name, split, tokenizer)
    target = Path(cache_dir) / "tokenized" / code / f"{split}-{key}"
    if not (target / "dataset_info.json").exists():
        ds = tokenize_language(settings, code, name, split, tokenizer)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=target.parent))
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, target)  # atomic: a concurrent builder either wins or finds ours
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def node_dataset(
    settings: DataSettings, languages: list[tuple[str, str]], split: str, tokenizer, cache_dir: str | Path
) -> datasets.Dataset:
    """Union of the languages' datasets for one split (languages = [(code, display name), ...])."""
    parts = [language_dataset(settings, code, name, split, tokenizer, cache_dir) for code, name in languages]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def skipped_count(ds: datasets.Dataset) -> int:
    try:
        return int(json.loads(ds.info.description or "{}").get("skipped", 0))
    except (ValueError, AttributeError):
        return 0


# ---- sizes for batching ----------------------------------------------------------------------------
def example_lengths(ds: datasets.Dataset) -> list[int]:
    """Cost of an example for padding purposes: the longer of its source and target."""
    return [max(len(i), len(l)) for i, l in zip(ds["input_ids"], ds["labels"])]
