"""Corpus layouts on disk -> examples per language and split.

The original's layout, kept loadable as is: ``<data_dir>/<corpus>/<code>/<corpus>_<code>_<split>.tsv``
(``amr3`` and ``flores``); any folder laid out that way is a corpus. Each TSV line holds
``<single-line PENMAN AMR>\\t<sentence>``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from penman import Tree

from hql_ray.amr import LinearizeOptions, iter_text_lines, linearize, parse_amr_tree, read_penman_blocks, read_text_lines
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
    for corpus in _select_corpora(_existing_dir(data_dir), corpora):
        path = corpus_file(data_dir, corpus, code, split)
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            total += sum(1 for raw in fh if raw.strip())
    return total


@dataclass(frozen=True)
class Example:
    """One AMR/sentence pair. No prompt here: dataset.py adds it and picks the direction."""

    amr: str  # single-line linearized PENMAN
    text: str  # the sentence
    lang: str  # FLORES code
    corpus: str
    origin: str  # "path:line", for error messages and tracing a bad example back


def read_tsv(
    path: str | Path,
    lang: str,
    corpus: str,
    options: LinearizeOptions | None = None,
    skip_bad: bool = False,
    on_bad: Callable[[InputError], None] | None = None,
    amr_cache: dict[str, str | InputError] | None = None,
) -> tuple[list[Example], int]:
    """`<AMR>\\t<sentence>` lines -> (examples, n_skipped); blank lines pass silently.

    Every line is checked (a tab, both sides non-empty, a well-formed graph). The AMR never holds a
    tab, so a line is split on its first tab and the rest is the sentence. With `skip_bad`, each bad
    line is skipped and handed to `on_bad` (if given). `amr_cache` memoizes the parse + linearization
    by the AMR's text across calls with the same `options`: the languages of a parallel corpus share
    their graphs, so a caller reading them all parses each graph once."""
    examples: list[Example] = []
    skipped = 0
    for i, raw in iter_text_lines(path):
        try:
            if isinstance(raw, InputError):
                raise raw
            if not raw.strip():
                continue
            examples.append(_tsv_example(raw, path, i, lang, corpus, options, amr_cache))
        except InputError as err:
            if not skip_bad:
                raise
            skipped += 1
            if on_bad is not None:
                on_bad(err)
    return examples, skipped


def _tsv_example(
    raw: str, path: str | Path, line: int, lang: str, corpus: str, options: LinearizeOptions | None,
    amr_cache: dict[str, str | InputError] | None = None,
) -> Example:
    amr, tab, text = raw.partition("\t")
    if not tab:
        raise InputError("no tab between the AMR and the sentence", path=path, line=line)
    if not amr.strip():
        raise InputError("empty AMR side (nothing before the tab)", path=path, line=line)
    text = text.strip()
    if not text:
        raise InputError("empty sentence side (nothing after the tab)", path=path, line=line)
    if amr_cache is None:
        linear = linearize(parse_amr_tree(amr, path, line), options)
    else:
        linear = amr_cache.get(amr)
        if linear is None:
            try:
                linear = linearize(parse_amr_tree(amr), options)
            except InputError as err:
                linear = err
            amr_cache[amr] = linear
        if isinstance(linear, InputError):  # the cached problem, placed at this file's line
            raise InputError(linear.problem, path=path, line=line)
    return Example(amr=linear, text=text, lang=lang, corpus=corpus, origin=f"{path}:{line}")


def cap_sample(examples: list[Example], cap: int | None, seed: int = 0) -> list[Example]:
    """At most `cap` examples, a seeded sample kept in file order (same seed -> same subset).

    The generator depends on the seed only, so languages of a parallel corpus with equally many
    lines keep the same rows (the same graphs)."""
    if cap is None or len(examples) <= cap:
        return list(examples)
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def load_examples(
    data_dir: str | Path,
    code: str,
    split: str,
    corpora: list[str] | None = None,
    cap: int | None = None,
    seed: int = 0,
    options: LinearizeOptions | None = None,
    skip_bad: bool = False,
) -> tuple[list[Example], int]:
    """Union over the corpora of one language and split, capped -> (examples, n_skipped).

    A corpus without a file for this language is passed over (check_layout is the strict check);
    no file at all is an InputError."""
    used = _select_corpora(_existing_dir(data_dir), corpora)
    examples: list[Example] = []
    skipped = 0
    files = 0
    for corpus in used:
        path = corpus_file(data_dir, corpus, code, split)
        if not path.is_file():
            continue
        files += 1
        found, bad = read_tsv(path, code, corpus, options=options, skip_bad=skip_bad)
        examples.extend(found)
        skipped += bad
    if not files:
        expected = corpus_file(data_dir, used[0] if used else "<corpus>", code, split)
        raise InputError(f"no corpus file for {code} {split} in {', '.join(used)}", path=expected)
    return cap_sample(examples, cap, seed), skipped


def _existing_dir(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError("data directory does not exist", path=root)
    if not discover_corpora(root):
        raise InputError(
            "no corpus in the data directory (expected <corpus>/<code>/<corpus>_<code>_<split>.tsv)", path=root
        )
    return root


def _code_and_name(lang: Any) -> tuple[str, str | None]:
    """A code string, or a tree Language (code, name)."""
    if isinstance(lang, str):
        return lang, None
    return lang.code, getattr(lang, "name", None)


def check_layout(
    data_dir: str | Path,
    codes: Iterable[Any],
    corpora: list[str] | None = None,
    splits: Iterable[str] = SPLITS,
) -> list[str]:
    """Every (corpus, language, split) file exists, before any training -> the corpora used.

    `codes` are FLORES codes or tree Languages (then the error names the language too)."""
    used = _select_corpora(_existing_dir(data_dir), corpora)
    for lang in codes:
        code, name = _code_and_name(lang)
        for corpus in used:
            for split in splits:
                path = corpus_file(data_dir, corpus, code, split)
                if not path.is_file():
                    label = f"{code} ({name})" if name else code
                    raise InputError(f"missing corpus file for {label}", path=path)
    return used


def find_ldc(data_dir: str | Path, code: str) -> tuple[Path, Path] | None:
    """The original's LDC2020T07 pair: data/graph_amr/graph_amr-test.txt + data/<code>/<code>-test.txt."""
    graph_file = Path(data_dir) / "graph_amr" / "graph_amr-test.txt"
    text_file = Path(data_dir) / code / f"{code}-test.txt"
    if graph_file.is_file() and text_file.is_file():
        return graph_file, text_file
    return None


def _ldc_graphs(graph_file: str | Path) -> list[tuple[Tree, int]]:
    """Graphs of the LDC graph file: one single-line graph per line (every non-blank line starts
    with '('), or else blank-line separated multi-line PENMAN blocks."""
    lines = read_text_lines(graph_file)
    if all(l.startswith("(") for l in lines if l.strip()):
        return [(parse_amr_tree(l, graph_file, i), i) for i, l in enumerate(lines, start=1) if l.strip()]
    entries, _ = read_penman_blocks(graph_file)
    return [(tree, line) for tree, _, line in entries]


def read_ldc(
    graph_file: str | Path, text_file: str | Path, lang: str, options: LinearizeOptions | None = None
) -> list[Example]:
    """LDC2020T07 (AMR 2.0 test in deu/eng/ita/spa): graphs and sentences aligned by position."""
    graphs = _ldc_graphs(graph_file)
    texts = read_text_lines(text_file)
    while texts and not texts[-1].strip():
        texts.pop()
    if len(graphs) != len(texts):
        raise InputError(
            f"{len(graphs)} graphs in {graph_file} but {len(texts)} sentences in {text_file}: "
            "the files must be aligned one graph per sentence",
            path=text_file,
        )
    out = []
    for (tree, gline), (tline, text) in zip(graphs, enumerate(texts, start=1)):
        if not text.strip():
            raise InputError("empty sentence", path=text_file, line=tline)
        out.append(
            Example(
                amr=linearize(tree, options),
                text=text.strip(),
                lang=lang,
                corpus="ldc2020t07",
                origin=f"{graph_file}:{gline}",
            )
        )
    return out
