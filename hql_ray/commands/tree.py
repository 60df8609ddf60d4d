"""`hql-ray tree`: show the curriculum a tree file and level choice give, before training on it.

With ``--data-dir`` each node also shows how many examples it would train on, so an empty
or lopsided node is seen before any GPU time is spent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import LanguageTree, load_tree, parse_level_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tree",
        help="show a language tree file as the tree of training nodes",
        description="Show the language tree (nodes, their languages, optional example counts).",
    )
    parser.add_argument("file", metavar="FILE", help="tree CSV (code, level columns, language)")
    parser.add_argument(
        "-ln", "--levels", nargs="+", metavar="LEVEL", default=None,
        help='level columns from root to leaves, e.g. -ln level0 level1 level2 language '
             '(also "level0", "level1", ... or level0,level1); default: all, language last',
    )
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="data folder (<corpus>/<code>/<corpus>_<code>_<split>.tsv): show example counts")
    parser.add_argument("--corpus", nargs="+", metavar="NAME", default=None,
                        help="corpora to count (default: every corpus found in --data-dir)")
    parser.add_argument("--split", default="train", choices=["train", "validation", "test"],
                        help="split to count (default: train)")
    parser.set_defaults(run=run)
    return parser


def example_counts(tree: LanguageTree, data_dir: str | Path, split: str = "train",
                   corpora: list[str] | None = None) -> dict[str, int]:
    """Examples per language code (render() sums them per node)."""
    from hql_ray.data.corpus import count_examples  # only when asked: keeps `tree` light

    if not Path(data_dir).is_dir():
        raise InputError("data folder not found", path=data_dir)
    return {lang.code: count_examples(data_dir, lang.code, split, corpora=corpora)
            for lang in tree.languages}


def run(args: argparse.Namespace) -> int:
    levels = None if args.levels is None else parse_level_args(args.levels)
    tree = load_tree(args.file, levels)
    counts = None
    if args.data_dir is not None:
        corpora = None if args.corpus is None else parse_level_args(args.corpus)
        counts = example_counts(tree, args.data_dir, args.split, corpora)
    print(f"{tree.path}  (levels: {' > '.join(tree.levels)})")
    print(tree.render(counts))
    if counts is not None:
        empty = [code for code, n in counts.items() if n == 0]
        print(f"{sum(counts.values()):,} {args.split} examples in {args.data_dir}")
        if empty:
            print(f"warning: no {args.split} examples for {', '.join(empty)}")
    print(tree.summary())
    return 0
