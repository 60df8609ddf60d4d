"""Corpus layouts on disk -> examples per language and split.

The original's layout, kept loadable as is: ``<data_dir>/<corpus>/<code>/<corpus>_<code>_<split>.tsv``
(``amr3`` and ``flores``); any folder laid out that way is a corpus. Each TSV line holds
``<single-line PENMAN AMR>\\t<sentence>``.
"""

from __future__ import annotations

from pathlib import Path

from hql_ray.errors import InputError

SPLITS = ("train", "validation", "test")


def corpus_file(data_dir: str | Path, corpus: str, code: str, split: str) -> Path:
    """The TSV of one corpus, language and split (may not exist)."""
    return Path(data_dir) / corpus / code / f"{corpus}_{code}_{split}.tsv"


def discover_corpora(data_dir: str | Path) -> list[str]:
    """Folders of ``data_dir`` holding at least one ``<corpus>/<code>/<corpus>_<code>_<split>.tsv``."""
    root = Path(data_dir)
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        corpus = sub.name
        for lang_dir in sub.iterdir():
            if lang_dir.is_dir() and any(
                corpus_file(root, corpus, lang_dir.name, s).is_file() for s in SPLITS
            ):
                found.append(corpus)
                break
    return found


def _select_corpora(data_dir: str | Path, corpora: list[str] | None) -> list[str]:
    """The corpora to use: all found, or the named ones (unknown name -> InputError)."""
    available = discover_corpora(data_dir)
    if corpora is None:
        return available
    unknown = [c for c in corpora if c not in available]
    if unknown:
        raise InputError(
            f"unknown corpus {', '.join(unknown)}; available: {', '.join(available) or 'none'}",
            path=data_dir,
        )
    return list(corpora)


def count_examples(
    data_dir: str | Path, code: str, split: str, corpora: list[str] | None = None
) -> int:
    """Non-blank lines over the corpora for one language and split, without parsing (cheap, for `tree`)."""
    total = 0
    for corpus in _select_corpora(data_dir, corpora):
        path = corpus_file(data_dir, corpus, code, split)
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            total += sum(1 for raw in fh if raw.strip())
    return total
