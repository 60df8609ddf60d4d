"""Which tree? The sample's 12 languages trained under the paper's two trees (PTHQL, DLHQL) and two trees
that `hql-ray tree suggest` makes from URIEL (--by genetic, --by syntax; depth 3 = level0 level1 level2
language, as the paper's), each an `hql-ray train` run with the demo's settings (configs/demo.yaml, one
epoch per level), printed side by side as paper_comparison.py prints the paper's table (its machinery:
the same runs, score reading and table).

    python benchmarks/tree_comparison.py                    # the four runs, one after the other
    python benchmarks/tree_comparison.py --max-steps 20     # a smoke version (every node capped)
    python benchmarks/tree_comparison.py --only genetic syntax
    python benchmarks/tree_comparison.py --report-only      # reprint the table of runs already in --out

The suggested trees are written to --out/trees/ and drawn before the runs. The sample's languages are
synthetic (one lexicon and grammar, the same graphs in every language): what a tree changes here is
which data each node sees and for how many steps, not real linguistic transfer. Nothing here asserts;
one seed, 10 + 30 test sentences a language: read differences of a point or two as noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import paper_comparison as pc

ROOT = pc.ROOT
SUGGESTED = ("genetic", "syntax")


def suggested_trees(out: Path) -> dict[str, tuple[str, str, int]]:
    """Write the suggested trees (the PTHQL file's languages and names) and return their experiments."""
    from hql_ray.settings.tree import load_tree, tree_csv
    from hql_ray.settings.typology import suggest

    paper = load_tree(ROOT / pc.EXPERIMENTS["pthql"][0])
    names = {lang.code: lang.name for lang in paper.languages}
    (out / "trees").mkdir(parents=True, exist_ok=True)
    experiments = {}
    for by in SUGGESTED:
        made = suggest(list(names), by, depth=3, names=names)
        path = out / "trees" / f"{by}.csv"
        path.write_text(tree_csv(made.levels, made.rows), encoding="utf-8")
        experiments[by] = (str(path), pc.LEVELS, 1)
    return experiments


def describe(name: str, tree_file: str) -> str:
    """One line per tree: its node count and its level-1 groups."""
    from hql_ray.settings.tree import load_tree

    tree = load_tree(tree_file)
    groups = "; ".join(f"{n.name} {{{', '.join(lang.name for lang in n.languages)}}}"
                       for n in tree.nodes_at_depth(1))
    return f"{name}: {len(tree.nodes)} nodes; level1: {groups}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "tree_comparison"), help="runs folder (one per tree)")
    p.add_argument("--only", nargs="+", choices=["pthql", "dlhql", *SUGGESTED], help="run only these trees")
    p.add_argument("--max-steps", type=int, help="cap every node's optimizer steps (smoke runs)")
    p.add_argument("--languages", type=int, help="score at most this many test sentences a language")
    p.add_argument("--report-only", action="store_true", help="print the table of runs already in --out")
    p.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = p.parse_args(argv)
    args.epochs = {}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    experiments = {"pthql": pc.EXPERIMENTS["pthql"], "dlhql": pc.EXPERIMENTS["dlhql"], **suggested_trees(out)}
    for name, (tree_file, _, _) in experiments.items():
        print(describe(name, str(ROOT / tree_file)), flush=True)
    names = args.only or list(experiments)
    timings = {}
    if not args.report_only:
        for name in names:
            if (out / name).exists():
                raise SystemExit(f"{out / name} exists: remove it or pass another --out")
            timings[name] = pc.run_experiment(name, out, args, experiments)
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
    elif (out / "timings.json").exists():
        timings = json.loads((out / "timings.json").read_text())
    results = {n: pc.leaf_scores(out / n) for n in names if (out / n / "manifest.json").exists()}
    if not results:
        print("no finished run to report")
        return 1
    for test_set in pc.TEST_SETS:
        print(f"\n{test_set} test set (chrF++ and BLEU 13a at each language's leaf)\n")
        print(pc.table(results, test_set, order=experiments))
    print("\n| tree | wall time | load before / after |\n|---|---:|---|")
    for n, t in timings.items():
        print(f"| {n} | {t['wall_s'] / 60:.1f} min | {t['load_before']} / {t['load_after']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
