"""Checking a data folder against a tree, for `hql-ray data`: every bad line of every corpus file (not just
the first), example counts, and token lengths of model inputs and targets as training would see them.

Read-only: it tokenizes in memory and never writes the Arrow cache into the user's data folder.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.data import corpus
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import Language

LDC = "ldc2020t07"
BATCH = 2048  # strings per tokenizer call


# ---- reading ------------------------------------------------------------------------------------
@dataclass
class Row:
    """One table row: a split of one corpus (or the split's total) with its token lengths."""

    split: str
    corpus: str
    sources: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.sources)


@dataclass
class LanguageReport:
    language: Language
    rows: list[Row]
    missing: list[str]  # "file: missing corpus file ..."
    other: list[str]  # no data, empty split, a broken LDC pair
    bad_lines: list[str]  # "file:line: problem", in file order
    counts: dict[str, int]  # split -> examples (TSV corpora only, what training loads)


class LineChecker:
    """corpus.read_tsv's checks, but collecting every bad line instead of stopping at the first.

    One checker reads every language: the AMR side of a parallel corpus is the same graph in each,
    so its parse + linearization is memoized by its text (same result, about 12x less penman work
    on amr3)."""

    def __init__(self) -> None:
        self._amr: dict[str, str | InputError] = {}

    def read(self, path: Path, lang: str, corpus_name: str) -> tuple[list[corpus.Example], list[str]]:
        bad: list[str] = []
        examples, _ = corpus.read_tsv(path, lang, corpus_name, skip_bad=True,
                                      on_bad=lambda err: bad.append(err.format()), amr_cache=self._amr)
        return examples, bad


# ---- tokenizing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No 'sequence longer than the model max length' warnings: measuring long inputs is the point
    (nor ByT5's 'already has </s>' for a sentence that holds that literal text)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)


def token_lengths(tokenizer, texts: list[str], target: bool = False) -> list[int]:
    """Token counts (EOS included, no truncation), as dataset.tokenize_language would see them.

    Byte-level ByT5 (the `tiny` tokenizer) is pure Python and slow (~0.2 ms a string); its count is
    the UTF-8 byte count + EOS for any text without a special-token look-alike ('<'), so those are
    counted directly and only the rest goes through the tokenizer. Other tokenizers: batched calls."""
    out: list[int | None] = [None] * len(texts)
    todo = list(range(len(texts)))
    if type(tokenizer).__name__ == "ByT5Tokenizer":
        todo = []
        for i, text in enumerate(texts):
            if "<" in text:
                todo.append(i)
            else:
                out[i] = len(text.encode("utf-8")) + 1
    with _quiet_transformers():
        for start in range(0, len(todo), BATCH):
            chunk = [texts[i] for i in todo[start:start + BATCH]]
            kwargs = {"text_target": chunk} if target else {"text": chunk}
            ids = tokenizer(**kwargs, return_attention_mask=False)["input_ids"]
            for i, seq in zip(todo[start:start + BATCH], ids):
                out[i] = len(seq)
    return out  # type: ignore[return-value]


def _measure(row: Row, examples: list[corpus.Example], name: str, direction: str, tokenizer) -> Row:
    from hql_ray.data.dataset import make_pair

    pairs = [make_pair(direction, name, ex.amr, ex.text) for ex in examples]
    row.sources = token_lengths(tokenizer, [p[0] for p in pairs])
    row.targets = token_lengths(tokenizer, [p[1] for p in pairs], target=True)
    return row


def inspect_language(data_dir: Path, lang: Language, corpora: list[str], direction: str, tokenizer,
                     checker: LineChecker) -> LanguageReport:
    """Every split of every corpus of one language, plus the LDC2020T07 test pair when present."""
    rows: list[Row] = []
    missing: list[str] = []
    bad_lines: list[str] = []
    counts: dict[str, int] = {}
    split_files: dict[str, int] = {}
    for split in corpus.SPLITS:
        split_rows = []
        for name in corpora:
            path = corpus.corpus_file(data_dir, name, lang.code, split)
            if not path.is_file():
                missing.append(InputError(f"missing corpus file for {lang.code} ({lang.name})", path=path).format())
                continue
            examples, bad = checker.read(path, lang.code, name)
            bad_lines.extend(bad)
            split_rows.append(_measure(Row(split, name), examples, lang.name, direction, tokenizer))
        rows.extend(split_rows)
        if len(split_rows) > 1:
            rows.append(Row(split, "total", [n for r in split_rows for n in r.sources],
                            [n for r in split_rows for n in r.targets]))
        counts[split] = sum(r.count for r in split_rows)
        split_files[split] = len(split_rows)

    problems: list[str] = []
    ldc = corpus.find_ldc(data_dir, lang.code)
    if ldc is not None:
        try:
            examples = corpus.read_ldc(ldc[0], ldc[1], lang.code)
            rows.append(_measure(Row("test", LDC), examples, lang.name, direction, tokenizer))
        except InputError as err:
            problems.append(err.format())
    label = f"{lang.code} ({lang.name})"
    where = data_dir / "<corpus>" / lang.code
    if not any(split_files.values()) and ldc is None:
        # one line says it better than a missing file per corpus and split
        problems.append(InputError(f"no data for {label}: no corpus file at all "
                                   f"(corpora: {', '.join(corpora) or 'none'})", path=where).format())
        return LanguageReport(lang, rows, [], problems, bad_lines, counts)
    if any(split_files.values()) and not any(counts.values()):
        problems.append(InputError(f"no data for {label}: its files hold no valid example",
                                   path=where).format())
    else:
        problems += [InputError(f"no valid {split} example for {label}", path=where).format()
                     for split in corpus.SPLITS if split_files[split] and not counts[split]]
    return LanguageReport(lang, rows, missing, problems, bad_lines, counts)


def percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


# ---- what to check -------------------------------------------------------------------------------
def select_corpora(data_dir: Path, wanted: list[str] | None, codes: list[str]) -> list[str]:
    """The corpora to check; unusable folder or unknown names -> InputError (exit 2)."""
    if not data_dir.is_dir():
        raise InputError("data directory does not exist", path=data_dir)
    available = corpus.discover_corpora(data_dir)
    if wanted is not None:
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise InputError(f"unknown corpus {', '.join(unknown)}; available: "
                             f"{', '.join(available) or 'none'}", path=data_dir)
        return wanted
    if not available and not any(corpus.find_ldc(data_dir, c) for c in codes):
        raise InputError("no corpus in the data directory (expected <corpus>/<code>/<corpus>_<code>_<split>.tsv, "
                         "or the original's GoldAMR_SilverText/data/amr3/..., SilverAMR_GoldText/data/flores/...)",
                         path=data_dir)
    return available


def load_tokenizer(base_model: str):
    from hql_ray.training import modeling

    try:
        return modeling.load_tokenizer(base_model)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the tokenizer of {base_model!r}: {err}") from None
