"""`hql-ray report RUN_DIR [RUN_DIR ...] [-o DIR]`: score tables (Markdown + CSV) and PNG plots.

    hql-ray report runs/12langs_pthql                     # into the run's folder
    hql-ray report runs/12langs_pthql runs/multi -o cmp      # compare runs (default: ./report)
    hql-ray report runs/12langs_pthql --examples 3          # + 3 source/hypothesis/reference per language
"""

from __future__ import annotations

import argparse

from hql_ray.commands import flags


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="tables and plots of one run, or a comparison of several",
        description="Scores per language and test set (spBLEU, BLEU (13a), chrF++, LID, LID diff; smatch F1 for "
        "parsing runs: the language's leaf node) for each run, the best per language and test set marked, and why "
        "a metric was not computed; loss curves, a timeline of nodes on their GPUs/workers and, for one run, how "
        "scores move from root to leaf. Writes report.md, report.csv and plots/*.png, and prints the Markdown.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding a manifest.json")
    flags.add_output(p, "output folder (default: the run's folder for one run, ./report for several)", "--out",
                     metavar="DIR")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--examples", type=int, default=0, metavar="N",
                   help="also show N source/hypothesis/reference triples per language and test set at the leaves, "
                   "read from the run's evaluation/<node>/<code>/<test set>/*.txt (default 0: none)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hql_ray.settings.errors import InputError
    from hql_ray.outputs.report import write_report

    if args.examples < 0:
        raise InputError(f"--examples must be 0 or more, not {args.examples}")
    result = write_report(args.runs, args.output, with_plots=not args.no_plots, examples=args.examples)
    print(result["markdown"])
    print("wrote: " + ", ".join(str(f) for f in result["files"]))
    return 0
