"""`hql-ray data`: inspect a data folder against a tree before any GPU time is spent.

Per language of the tree and per split it prints example counts (per corpus and total), token-length
percentiles of the model input (prompt included, as `dataset.make_pair` builds it) and of the target,
how many would be clipped by the max lengths, and every problem found: each bad line as
``file:line: problem`` (all of them, not just the first), missing split files, languages without data.
Exit code 0: no problems; 1: problems (so it can gate a run); 2: unusable input (InputError).

Read-only: it tokenizes in memory and never writes the Arrow cache into the user's data folder.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray import corpus
from hql_ray.errors import InputError
from hql_ray.tree import Language, load_tree, parse_level_args

PERCENTILES = (50, 90, 99)
LDC = "ldc2020t07"
BATCH = 2048  # strings per tokenizer call


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="check a data folder against a tree: counts, token lengths, bad lines",
        description="Per language and split: example counts, token-length percentiles, clipped "
                    "examples and every problem found. Exit 0 = clean, 1 = problems, 2 = unusable input.",
    )
    parser.add_argument("dir", metavar="DIR", help="data folder (<corpus>/<code>/<corpus>_<code>_<split>.tsv)")
    parser.add_argument("-lf", "--language-file", required=True, metavar="TREE",
                        help="tree CSV (code, level columns, language)")
    parser.add_argument("-ln", "--levels", nargs="+", metavar="LEVEL", default=None,
                        help="level columns (checked like `train` does; the languages are the same)")
    parser.add_argument("--corpus", nargs="+", metavar="NAME", default=None,
                        help="corpora to check (default: every corpus found in DIR)")
    parser.add_argument("-bm", "--base-model", default="tiny",
                        help="tokenizer to measure lengths with (default: tiny, byte-level, offline)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="bad lines are still listed, but as warnings (a run with --skip-bad skips them)")
    parser.add_argument("--max-source-length", type=int, default=512, metavar="N",
                        help="model input length in tokens; longer inputs are clipped (default: 512)")
    parser.add_argument("--max-target-length", type=int, default=256, metavar="N",
                        help="target length in tokens; longer targets are clipped (default: 256)")
    parser.add_argument("--direction", choices=["amr2text", "text2amr"], default="amr2text",
                        help="which side is the input (default: amr2text)")
    parser.set_defaults(run=run)
    return parser


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
    from hql_ray.dataset import make_pair

    pairs = [make_pair(direction, name, ex.amr, ex.text) for ex in examples]
    row.sources = token_lengths(tokenizer, [p[0] for p in pairs])
    row.targets = token_lengths(tokenizer, [p[1] for p in pairs], target=True)
    return row


def inspect_language(data_dir: Path, lang: Language, corpora: list[str], args, tokenizer,
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
            split_rows.append(_measure(Row(split, name), examples, lang.name, args.direction, tokenizer))
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
            rows.append(_measure(Row("test", LDC), examples, lang.name, args.direction, tokenizer))
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


# ---- output -------------------------------------------------------------------------------------
def percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def _lengths(values: list[int]) -> str:
    if not values:
        return "-"
    return "/".join(str(percentile(values, p)) for p in PERCENTILES) + f"/{max(values)}"


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Aligned plain-text columns: the first `left` columns left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def format_language(rep: LanguageReport, max_source: int, max_target: int, skip_bad: bool) -> str:
    lines = [f"{rep.language.code}  {rep.language.name}"]
    header = ["split", "corpus", "examples", "input p50/p90/p99/max", f"> {max_source}",
              "target p50/p90/p99/max", f"> {max_target}"]
    body = [[r.split, r.corpus, f"{r.count:,}", _lengths(r.sources),
             str(sum(n > max_source for n in r.sources)), _lengths(r.targets),
             str(sum(n > max_target for n in r.targets))] for r in rep.rows]
    if body:
        lines += _table(header, body)
    for kind, items in (("missing files", rep.missing), ("problems", rep.other),
                        ("bad lines (skipped by --skip-bad)" if skip_bad else "bad lines", rep.bad_lines)):
        if items:
            lines.append(f"  {kind} ({len(items)}):")
            lines += [f"    {item}" for item in items]
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def summary(reports: list[LanguageReport], skip_bad: bool) -> tuple[str, int]:
    """The last line and the exit code (1 when anything would stop or spoil a run)."""
    per_split = {s: sum(r.counts.get(s, 0) for r in reports) for s in corpus.SPLITS}
    bad = sum(len(r.bad_lines) for r in reports)
    missing = sum(len(r.missing) for r in reports)
    other = sum(len(r.other) for r in reports)
    parts = [_plural(n, word) for n, word in ((bad, "bad line"), (missing, "missing file"),
                                              (other, "other problem")) if n]
    problems = missing + other + (0 if skip_bad else bad)
    text = (f"{_plural(len(reports), 'language')}, {_plural(sum(per_split.values()), 'example')} "
            f"({', '.join(f'{s} {n:,}' for s, n in per_split.items())}); "
            + (_plural(problems, 'problem') if problems else "no problems")
            + (f": {', '.join(parts)}" if parts else "")
            + (" (bad lines skipped by --skip-bad, not counted)" if skip_bad and bad else ""))
    return text, 1 if problems else 0


# ---- command ------------------------------------------------------------------------------------
def _corpora(data_dir: Path, wanted: list[str] | None, codes: list[str]) -> list[str]:
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
        raise InputError("no corpus in the data directory "
                         "(expected <corpus>/<code>/<corpus>_<code>_<split>.tsv)", path=data_dir)
    return available


def _load_tokenizer(base_model: str):
    from hql_ray.modeling import load_tokenizer

    try:
        return load_tokenizer(base_model)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load the tokenizer of {base_model!r}: {err}") from None


def run(args: argparse.Namespace) -> int:
    levels = None if args.levels is None else parse_level_args(args.levels)
    tree = load_tree(args.language_file, levels)
    data_dir = Path(args.dir)
    wanted = None if args.corpus is None else parse_level_args(args.corpus)
    corpora = _corpora(data_dir, wanted, [lang.code for lang in tree.languages])
    for flag in ("max_source_length", "max_target_length"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    tokenizer = _load_tokenizer(args.base_model)
    print(f"data {data_dir}  corpora: {', '.join(corpora) or 'none'}  tree: {tree.path} "
          f"({_plural(len(tree.languages), 'language')})")
    print(f"lengths in {args.base_model} tokens, EOS included; {args.direction} input = prompt + "
          f"{'AMR' if args.direction == 'amr2text' else 'sentence'}; "
          f"'> N' = clipped at --max-source-length {args.max_source_length} / "
          f"--max-target-length {args.max_target_length}")
    checker = LineChecker()
    reports = []
    for lang in tree.languages:
        rep = inspect_language(data_dir, lang, corpora, args, tokenizer, checker)
        reports.append(rep)
        print()
        print(format_language(rep, args.max_source_length, args.max_target_length, args.skip_bad), flush=True)
    extra = sorted({d.name for c in corpora for d in (data_dir / c).iterdir() if d.is_dir()}
                   - {lang.code for lang in tree.languages})
    print()
    if extra:
        print(f"not in the tree (not checked): {', '.join(extra)}")
    text, code = summary(reports, args.skip_bad)
    print(text)
    return code
