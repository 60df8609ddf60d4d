"""`hql-ray data`: inspect a data folder against a tree before any GPU time is spent.

Per language of the tree and per split it prints example counts (per corpus and total), token-length
percentiles of the model input (prompt included, as `dataset.make_pair` builds it) and of the target,
how many would be clipped by the max lengths, and every problem found: each bad line as
``file:line: problem`` (all of them, not just the first), missing split files, languages without data.
Exit code 0: no problems; 1: problems (so it can gate a run); 2: unusable input (InputError).

The checking itself is `hql_ray.prep.datacheck`; this module is the command and its printout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hql_ray.data import corpus
from hql_ray.prep.datacheck import LanguageReport, LineChecker, inspect_language, load_tokenizer, percentile, select_corpora
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import load_tree, parse_level_args

PERCENTILES = (50, 90, 99)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="check a data folder against a tree: counts, token lengths, bad lines",
        description="Per language and split: example counts, token-length percentiles, clipped "
                    "examples and every problem found. Exit 0 = clean, 1 = problems, 2 = unusable input.",
    )
    parser.add_argument("dir", metavar="DIR", help="data folder: ours (<corpus>/<code>/<corpus>_<code>_<split>.tsv) "
                                                  "or the original's (GoldAMR_SilverText/data/amr3/..., data/README.md)")
    parser.add_argument("-lf", "--language-file", required=True, metavar="TREE",
                        help="tree CSV (code, level columns, language)")
    parser.add_argument("-ln", "--levels", nargs="+", metavar="LEVEL", default=None,
                        help="level columns (checked like `train` does; the languages are the same)")
    parser.add_argument("--corpus", nargs="+", metavar="NAME", default=None,
                        help="corpora to check (default: every corpus found in DIR; the header says which "
                             "ones training uses)")
    parser.add_argument("-bm", "--base-model", default="tiny",
                        help="tokenizer to measure lengths with (default: tiny, byte-level, offline)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="bad lines are still listed, but as warnings (a run with --skip-bad skips them)")
    parser.add_argument("--max-source-length", type=int, default=512, metavar="N",
                        help="count inputs longer than N tokens (default: 512; a run clips them only if "
                             "data.max_source_length is set: by default nothing is clipped, as the original)")
    parser.add_argument("--max-target-length", type=int, default=256, metavar="N",
                        help="count targets longer than N tokens (default: 256; clipped only with "
                             "data.max_target_length)")
    parser.add_argument("--direction", choices=["amr2text", "text2amr"], default="amr2text",
                        help="which side is the input (default: amr2text)")
    parser.set_defaults(run=run)
    return parser


# ---- output -------------------------------------------------------------------------------------
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


def training_corpora_line(data_dir: Path, wanted: list[str] | None) -> str:
    """Which of the corpora a `train` with the same --corpus would use, and which it leaves out."""
    try:
        used = corpus.select_corpora(data_dir, wanted)
    except InputError as err:
        return f"training: not possible as is ({err.problem})"
    unused = corpus.unused_corpora(data_dir, used)
    default = (" (the original's)" if used == list(corpus.DEFAULT_CORPORA)
               else " (every corpus here: no amr3 and flores)")
    tests = corpus.default_test_sets(data_dir, used)
    return (f"training uses: {', '.join(used)}" + (default if wanted is None else "")
            + (f"; not used for training: {', '.join(unused)}" if unused else "")
            + f"; test sets scored without --test-sets: {', '.join(tests) or 'none'}")


# ---- command ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    levels = None if args.levels is None else parse_level_args(args.levels)
    tree = load_tree(args.language_file, levels)
    data_dir = Path(args.dir)
    wanted = None if args.corpus is None else parse_level_args(args.corpus)
    corpora = select_corpora(data_dir, wanted, [lang.code for lang in tree.languages])
    for flag in ("max_source_length", "max_target_length"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    tokenizer = load_tokenizer(args.base_model)
    print(f"data {data_dir}  corpora: {', '.join(corpora) or 'none'}  tree: {tree.path} "
          f"({_plural(len(tree.languages), 'language')})")
    print(training_corpora_line(data_dir, wanted))
    print(f"lengths in {args.base_model} tokens, EOS included; {args.direction} input = prompt + "
          f"{'AMR' if args.direction == 'amr2text' else 'sentence'}; "
          f"'> N' = longer than --max-source-length {args.max_source_length} / "
          f"--max-target-length {args.max_target_length} (clipped only where data.max_source_length / "
          f"max_target_length are set; not by default)")
    checker = LineChecker()
    reports = []
    for lang in tree.languages:
        rep = inspect_language(data_dir, lang, corpora, args.direction, tokenizer, checker)
        reports.append(rep)
        print()
        print(format_language(rep, args.max_source_length, args.max_target_length, args.skip_bad), flush=True)
    extra = sorted({code for c in corpora for code in corpus.corpus_languages(data_dir, c)}
                   - {lang.code for lang in tree.languages})
    print()
    if extra:
        print(f"not in the tree (not checked): {', '.join(extra)}")
    text, code = summary(reports, args.skip_bad)
    print(text)
    return code
