"""The HQL paper's comparison on the bundled sample: monolingual, multilingual, DLHQL and PTHQL, each an
`hql-ray train` run with the demo's settings (configs/demo.yaml: the pre-trained tiny mT5, LoRA r=16,
4-bit, batch 8), printed as the paper's per-language table (chrF++ and BLEU per language and approach,
and their mean), with each run's wall time.

    python benchmarks/paper_comparison.py                       # the four runs as the paper sets them
    python benchmarks/paper_comparison.py --max-steps 20        # a smoke version (every node capped)
    python benchmarks/paper_comparison.py --only pthql mono     # some of them
    python benchmarks/paper_comparison.py --epochs mono=5 multilingual=1   # shorter baselines

The four experiments, as configs/{mono,multilingual,dlhql,pthql}.yaml set them (the paper's epochs):
- mono: every language alone from the base, 21 epochs (mono.yaml per language; here all 12 in one run:
  the PTHQL tree cut to its `language` level is 12 independent one-node trees);
- multilingual: one node with all 12 languages, 4 epochs (12langs.csv, level0);
- dlhql: the tree of distant-language pairs, 1 epoch per level (12langs_dlhql.csv);
- pthql: the phylogenetic tree, 1 epoch per level (12langs_pthql.csv): the demo itself.
The runs share one cache (--out/.cache), so the tiny base is pre-trained once, by the first run (its
cost is in that run's wall time and printed apart). Runs go one after the other, each on every CPU.
Nothing here asserts; the numbers are one seed on a synthetic corpus (10 flores + 30 amr3 test
sentences a language): read differences of a point or two as noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEVELS = "[level0, level1, level2, language]"
EXPERIMENTS = {  # name -> (tree file, levels, epochs)
    "mono": ("language_files/12langs_pthql.csv", "[language]", 21),
    "multilingual": ("language_files/12langs.csv", "[level0]", 4),
    "dlhql": ("language_files/12langs_dlhql.csv", LEVELS, 1),
    "pthql": ("language_files/12langs_pthql.csv", LEVELS, 1),
}
TEST_SETS = ("flores", "amr3")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_experiment(name: str, out: Path, args, experiments: dict | None = None) -> dict:
    """One `hql-ray train` run in a child process; its wall time and the load around it.
    `experiments`: name -> (tree file, levels, epochs), EXPERIMENTS by default (tree_comparison.py adds its own)."""
    tree_file, levels, epochs = (experiments or EXPERIMENTS)[name]
    overrides = [f"run.output_dir={out}", f"run.name={name}", f"tree.file={ROOT / tree_file}",
                 f"tree.levels={levels}", f"train.epochs={args.epochs.get(name, epochs)}", f"data.dir={ROOT / 'data' / 'sample'}"]
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.languages:
        overrides.append(f"data.max_test_per_language={args.languages}")
    cmd = [sys.executable, "-m", "hql_ray", "train", "--plain", "--config", str(ROOT / "configs" / "demo.yaml"),
           *overrides, *args.extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before, started = load(), time.time()
    log = out / f"{name}.log"
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - started
    print(f"{name}: rc {rc}, {wall / 60:.1f} min (load before {before}, after {load()}); log {log}", flush=True)
    return {"name": name, "rc": rc, "wall_s": wall, "load_before": before, "load_after": load()}


def leaf_scores(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{code: {test set: {"chrf": x, "bleu": y, "n": n}, "_name": name}}: each language at its leaf, read
    through the package's manifest records (an older run's one score per language is test set "union")."""
    from hql_ray.outputs.manifest import read_manifest, run_tree
    from hql_ray.outputs.results import language_rows

    manifest = read_manifest(run_dir)
    tree, _ = run_tree(manifest)
    out: dict[str, dict] = {}
    for row in language_rows(manifest, tree):
        per_language = out.setdefault(row.code, {"_name": row.language})
        if row.test_set is not None:
            per_language[row.test_set] = {"chrf": row.scores.get("chrf++"), "bleu": row.scores.get("bleu_13a"),
                                          "n": row.n_test}
    return out


def fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(results: dict[str, dict], test_set: str, order=EXPERIMENTS) -> str:
    names = [n for n in order if n in results]
    codes = next(iter(results.values())).keys()
    head = ["language"] + [f"{n} {m}" for n in names for m in ("chrF++", "BLEU")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    sums = {(n, m): [] for n in names for m in ("chrf", "bleu")}
    for code in codes:
        cells = [results[names[0]][code]["_name"]]
        for n in names:
            s = results[n].get(code, {}).get(test_set, {})
            for m in ("chrf", "bleu"):
                cells.append(fmt(s.get(m)))
                if s.get(m) is not None:
                    sums[(n, m)].append(s[m])
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["**mean**"] + [fmt(sum(v) / len(v)) if v else "-" for (n, m), v in sums.items()]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "paper_comparison"), help="runs folder (one per experiment)")
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), help="run only these experiments")
    p.add_argument("--epochs", nargs="+", default=[], metavar="NAME=N",
                   help="epochs of an experiment instead of the paper's, e.g. mono=5 multilingual=1")
    p.add_argument("--max-steps", type=int, help="cap every node's optimizer steps (smoke runs)")
    p.add_argument("--languages", type=int, help="score at most this many test sentences a language")
    p.add_argument("--report-only", action="store_true", help="print the table of runs already in --out")
    p.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = p.parse_args(argv)
    args.epochs = {k: int(v) for k, v in (item.split("=", 1) for item in args.epochs)}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(EXPERIMENTS)
    timings = {}
    if not args.report_only:
        for name in names:
            if (out / name).exists():
                raise SystemExit(f"{out / name} exists: remove it or pass another --out")
            timings[name] = run_experiment(name, out, args)
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
    elif (out / "timings.json").exists():
        timings = json.loads((out / "timings.json").read_text())
    results = {n: leaf_scores(out / n) for n in names if (out / n / "manifest.json").exists()}
    if not results:
        print("no finished run to report")
        return 1
    for test_set in TEST_SETS:
        print(f"\n{test_set} test set (chrF++ and BLEU 13a at each language's leaf)\n")
        print(table(results, test_set))
    print("\n| approach | wall time | load before / after |\n|---|---:|---|")
    for n, t in timings.items():
        print(f"| {n} | {t['wall_s'] / 60:.1f} min | {t['load_before']} / {t['load_after']} |")
    record = out / ".cache" / "models" / "tiny-mt5-pretrained-v1" / "pretraining.json"
    if record.exists():
        r = json.loads(record.read_text())
        print(f"\nthe tiny base's pre-training (inside the first run's time): {r['seconds']:.0f} s, "
              f"{r['settings']['steps']} steps, final loss {r['loss_last_50']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
