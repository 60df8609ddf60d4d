"""`hql-ray report` on a 200-language run: how long it takes, how long its Markdown is, how big its plots are.

A run folder is made up without training: a seeded FLORES-200-like tree (benchmarks/synthetic_tree.py), every
node done, a loss history per node, four test sets' scores per language at every node (chrF++ climbing a
little from root to leaf), start and finish times on `--slots` slots. Then `write_report` (what `hql-ray
report` calls) writes it all, and the script prints the time, the Markdown's sections and line counts, and
each plot's size in pixels, so the plots can be looked at (`--keep`).

Run: .venv/bin/python benchmarks/report_scale.py                  (200 languages; ~1 min)
     .venv/bin/python benchmarks/report_scale.py --languages 40 --keep
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, temp_dir  # noqa: E402
from synthetic_tree import synthetic_tree, write_tree_csv  # noqa: E402

from hql_ray.outputs.manifest import Manifest  # noqa: E402
from hql_ray.outputs.report import write_report  # noqa: E402
from hql_ray.settings.config import make_config  # noqa: E402
from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeResources, TestSetScores  # noqa: E402
from hql_ray.settings.tree import load_tree  # noqa: E402

TEST_SETS = ("flores", "qald9", "ldc", "massive")


def made_up_run(out: Path, languages: int, seed: int, slots: int) -> Path:
    """A finished run folder of a synthetic tree: histories, scores and times drawn from `seed`."""
    synthetic = synthetic_tree(seed, languages, None)
    tree_file = write_tree_csv(synthetic, out / "tree.csv")
    levels = synthetic.levels
    cfg = make_config(overrides=[f"tree.file={tree_file}", f"tree.levels=[{', '.join(levels)}]",
                                 f"run.output_dir={out}", "run.name=made-up"])
    tree = load_tree(tree_file, levels)
    run_dir = out / "made-up"
    run_dir.mkdir()
    manifest = Manifest.create(run_dir / "manifest.json", tree, cfg.to_dict(), "made-up")
    manifest.data["slots"] = {"total": slots, "gpu": True}
    rng = random.Random(seed)
    free_at = [0.0] * slots
    for node in sorted(tree.nodes.values(), key=lambda n: n.depth):  # parents first
        parent_end = manifest.nodes[node.parent].finished_at if node.parent else 0.0
        slot = min(range(slots), key=lambda s: free_at[s])
        start = max(parent_end, free_at[slot]) + rng.uniform(5, 30)
        end = start + rng.uniform(600, 6000)
        free_at[slot] = end
        loss = rng.uniform(2.0, 4.0)
        history = [HistoryPoint(step, train_loss=loss * 0.9 ** (step / 100) + 0.1,
                                val_loss=loss * 0.92 ** (step / 100)) for step in range(0, 1001, 100)]
        scores = {lang.code: {test_set: TestSetScores(n=100, chrf=30 + 5 * node.depth + rng.uniform(-8, 8),
                                                      spbleu=10 + 2 * node.depth + rng.uniform(-4, 4),
                                                      bleu_13a=8 + 2 * node.depth + rng.uniform(-4, 4))
                              for test_set in TEST_SETS} for lang in node.languages}
        manifest.update(node.id, status="done", started_at=start, finished_at=end, history=history,
                        resources=NodeResources(1, True, "ray-train", gpu_ids=[str(slot)]),
                        metrics=NodeMetrics(initial_val_loss=loss, val_loss=history[-1].val_loss, steps=1000,
                                            train_seconds=end - start, languages=scores))
    manifest.set_run_status("done")
    return run_dir


def manifest_read_seconds(run_dir: Path) -> tuple[float, float]:
    """Reading the run's manifest with each record class's field types worked out once (`records._fields_of`,
    cached) and, as before that cache, at every record read (its uncached function): seconds, side by side."""
    from hql_ray.outputs.manifest import read_manifest
    from hql_ray.settings import records

    t0 = time.perf_counter()
    read_manifest(run_dir)
    cached = time.perf_counter() - t0
    original = records._fields_of
    records._fields_of = original.__wrapped__
    try:
        t0 = time.perf_counter()
        read_manifest(run_dir)
        uncached = time.perf_counter() - t0
    finally:
        records._fields_of = original
    return cached, uncached


def manifest_update_seconds(run_dir: Path, repeats: int = 10) -> tuple[float, float]:
    """CPU seconds of one node update written as `Manifest.update` writes it (that node serialized anew, the
    others' text reused) and as it was written before (`save`: every node serialized again), side by side."""
    manifest = Manifest.load(run_dir / "manifest.json")
    node_id = next(iter(manifest.nodes))
    manifest.save()
    t0 = time.process_time()
    for attempt in range(repeats):
        manifest.update(node_id, attempts=attempt)
    one_node = (time.process_time() - t0) / repeats
    t0 = time.process_time()
    for attempt in range(repeats):
        manifest.nodes[node_id].attempts = attempt
        manifest.save()
    whole = (time.process_time() - t0) / repeats
    return one_node, whole


def markdown_sections(markdown: str) -> list[list[str]]:
    rows, title, count = [], "(head)", 0
    for line in markdown.splitlines():
        if line.startswith("## "):
            rows.append([title, str(count)])
            title, count = line[3:], 0
        count += 1
    return [*rows, [title, str(count)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", type=int, default=200, help="synthetic tree size (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=32, help="GPU slots the made-up run had (default 32)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder and its report (prints where)")
    args = parser.parse_args(argv)
    from PIL import Image

    with temp_dir("hql-bench-report-", keep=args.keep) as out:
        run_dir = made_up_run(out, args.languages, args.seed, args.slots)
        nodes = len(Manifest.load(run_dir / "manifest.json").nodes)
        cached, uncached = manifest_read_seconds(run_dir)
        one_node, whole = manifest_update_seconds(run_dir)
        t0 = time.perf_counter()
        result = write_report([run_dir])
        took = time.perf_counter() - t0
        print(f"hql-ray report on a made-up run: {args.languages} languages, {nodes} nodes, "
              f"{len(TEST_SETS)} test sets: {took:.1f} s, report.md {len(result['markdown'].splitlines())} lines")
        print(f"reading its manifest.json: {cached:.2f} s with each record's field types worked out once, "
              f"{uncached:.2f} s worked out at every record (before; x{uncached / cached:.0f})")
        print(f"one node's update written to it: {1000 * one_node:.0f} ms of CPU with the other nodes' text reused, "
              f"{1000 * whole:.0f} ms with every node serialized again (before; x{whole / one_node:.1f})")
        print_table(["report.md section", "lines"], markdown_sections(result["markdown"]))
        plots = [f for f in result["files"] if f.suffix == ".png"]
        print()
        print_table(["plot", "pixels", "KB"], [[f.name, "x".join(map(str, Image.open(f).size)),
                                                f"{f.stat().st_size / 1024:.0f}"] for f in plots])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
