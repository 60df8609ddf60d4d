"""`hql-ray tree`: show, suggest and convert language trees, before training on one.

    hql-ray tree show FILE [-ln LEVEL ...] [--data-dir DIR]   # the nodes a file and level choice give
    hql-ray tree FILE ...                                     # the same (the older spelling)
    hql-ray tree suggest --langs CODES --by genetic -o tree.csv
    hql-ray tree convert tree.csv -o tree.nwk                 # and back: Newick <-> our CSV

With ``--data-dir`` each node also shows how many examples it would train on, so an empty or lopsided
node is seen before any GPU time is spent. A FILE is a tree CSV or a Newick file (by suffix or content).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import LanguageTree, parse_level_args

SUBCOMMANDS = ("show", "suggest", "convert")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tree",
        help="language trees: show a tree file, suggest one from typology, convert to/from Newick",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="?", metavar="show|suggest|convert|FILE",
                        help="a subcommand (see `hql-ray tree suggest --help`), or a tree file to show")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=run, tree_parser=parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch by hand, so that `hql-ray tree FILE -ln ...` (no subcommand) keeps working."""
    if args.target is None:
        args.tree_parser.print_help()
        return 2
    name, argv = (args.target, args.rest) if args.target in SUBCOMMANDS else ("show", [args.target, *args.rest])
    parser = {"show": show_parser, "suggest": suggest_parser, "convert": convert_parser}[name]()
    sub = parser.parse_args(argv)
    return sub.action(sub)


def _levels_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-ln", "--levels", nargs="+", metavar="LEVEL", default=None,
        help='level columns from root to leaves, e.g. -ln level0 level1 level2 language '
             '(also "level0", "level1", ... or level0,level1); default: all, language last')


def show_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hql-ray tree show",
        description="Show a language tree (nodes, their languages, optional example counts).")
    parser.add_argument("file", metavar="FILE", help="tree CSV (code, level columns, language) or Newick file")
    _levels_option(parser)
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="data folder (<corpus>/<code>/<corpus>_<code>_<split>.tsv): show example counts")
    parser.add_argument("--corpus", nargs="+", metavar="NAME", default=None,
                        help="corpora to count (default: every corpus found in --data-dir)")
    parser.add_argument("--split", default="train", choices=["train", "validation", "test"],
                        help="split to count (default: train)")
    parser.set_defaults(action=show)
    return parser


def example_counts(tree: LanguageTree, data_dir: str | Path, split: str = "train",
                   corpora: list[str] | None = None) -> dict[str, int]:
    """Examples per language code (render() sums them per node)."""
    from hql_ray.data.corpus import count_examples  # only when asked: keeps `tree` light

    if not Path(data_dir).is_dir():
        raise InputError("data folder not found", path=data_dir)
    return {lang.code: count_examples(data_dir, lang.code, split, corpora=corpora)
            for lang in tree.languages}


def show(args: argparse.Namespace) -> int:
    from hql_ray.settings.newick import read_tree

    levels = None if args.levels is None else parse_level_args(args.levels)
    tree = read_tree(args.file, levels)
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


def suggest_parser() -> argparse.ArgumentParser:
    from hql_ray.settings.typology import GROUPINGS

    modes = "\n".join(f"  {name:<10} {g.help}" for name, g in GROUPINGS.items())
    parser = argparse.ArgumentParser(
        prog="hql-ray tree suggest", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Suggest a tree from URIEL's language data (lang2vec; offline). A starting point: "
                    "it knows families, typology and geography, not your data.",
        epilog=f"--by:\n{modes}\n\nSee docs/trees.md.")
    parser.add_argument("--langs", nargs="+", required=True, metavar="CODES",
                        help="language codes (FLORES deu_Latn, ISO 639-3 deu), spaces or commas between; "
                             "or a tree file whose languages (and names) to use")
    parser.add_argument("--by", default="genetic", choices=list(GROUPINGS), help="how to group (default: genetic)")
    parser.add_argument("--depth", type=int, default=3,
                        help="at most this many group levels above the languages, the root included "
                             "(default 3: level0 level1 level2, as the paper's trees)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write here (.csv: our tree file; .nwk/.newick: Newick); default: CSV on stdout")
    parser.set_defaults(action=suggest)
    return parser


def _languages(values: list[str]) -> tuple[list[str], dict[str, str]]:
    """Codes from --langs, and display names when they come from a tree file."""
    pieces = parse_level_args(values)
    if len(pieces) == 1 and Path(pieces[0]).is_file():
        from hql_ray.settings.newick import read_tree

        tree = read_tree(pieces[0])
        return [lang.code for lang in tree.languages], {lang.code: lang.name for lang in tree.languages}
    return pieces, {}


def suggest(args: argparse.Namespace) -> int:
    from hql_ray.settings.tree import tree_from_rows
    from hql_ray.settings.typology import suggest as make

    codes, names = _languages(args.langs)
    made = make(codes, args.by, args.depth, names)
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    tree = tree_from_rows(made.levels, made.rows, args.output or "<suggested>")
    return _write(tree, made.levels, made.rows, args.output, f"--by {args.by}")


def _write(tree: LanguageTree, levels, rows, output: str | None, what: str) -> int:
    """To ``output`` (format by suffix) with the drawing on stdout, or the CSV itself on stdout."""
    from hql_ray.settings.newick import SUFFIXES, tree_to_newick
    from hql_ray.settings.tree import tree_csv

    newick = output is not None and Path(output).suffix.lower() in SUFFIXES
    text = tree_to_newick(tree) if newick else tree_csv(levels, rows)
    if output is None:
        sys.stdout.write(text)
        return 0
    path = Path(output)
    if path.is_dir():
        raise InputError("is a directory: give a file name (tree.csv or tree.nwk)", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(tree.render())
    print(f"{tree.summary()} ({what}); wrote {path}" +
          ("" if newick else f"; train on it with tree.file={path} tree.levels=[{', '.join(tree.levels)}]"))
    return 0


def convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hql-ray tree convert",
        description="Convert a tree between our CSV and Newick (by the output's suffix: .nwk/.newick = Newick, "
                    "else CSV). A Newick language is a leaf 'Name [code]' (or a bare code); see docs/trees.md.")
    parser.add_argument("file", metavar="FILE", help="tree CSV or Newick file")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here; default: stdout in --to's format")
    parser.add_argument("--to", choices=["csv", "newick"], default=None,
                        help="output format (default: by -o's suffix; on stdout: the other format than FILE's)")
    _levels_option(parser)
    parser.add_argument("--depth", type=int, default=None,
                        help="Newick to CSV: keep at most this many group levels (deeper groups are dropped)")
    parser.set_defaults(action=convert)
    return parser


def convert(args: argparse.Namespace) -> int:
    from hql_ray.settings.newick import SUFFIXES, is_newick, read_tree
    from hql_ray.settings.tree import tree_rows

    if args.depth is not None and (args.depth < 0 or not is_newick(args.file)):
        raise ConfigError(f"--depth {args.depth}: " + ("must be 0 or more" if args.depth < 0 else
                          "cuts a Newick tree; for a CSV, choose its levels with -ln"))
    levels = None if args.levels is None else parse_level_args(args.levels)
    tree = read_tree(args.file, levels, depth=args.depth)
    to = args.to or ("newick" if (Path(args.output).suffix.lower() in SUFFIXES if args.output
                                  else not is_newick(args.file)) else "csv")
    output = args.output
    if output is not None and (to == "newick") != (Path(output).suffix.lower() in SUFFIXES):
        raise ConfigError(f"--to {to} but -o {output} has the other format's suffix "
                          f"({'.nwk or .newick' if to == 'newick' else '.csv'} expected)")
    columns, rows = tree_rows(tree)
    if output is None and to == "newick":
        from hql_ray.settings.newick import tree_to_newick

        sys.stdout.write(tree_to_newick(tree))
        return 0
    return _write(tree, columns, rows, output, f"from {args.file}")
