"""Padding benchmark: real-token share of batches with and without length grouping.

Every batch is padded to its longest example, so the share of real (non-pad) tokens is the share
of the compute that does useful work. The trainer batches with `dataset.length_grouped_batches`
(group=True, the original's `group_by_length`); this measures what that buys over plain shuffled
batches (group=False), side by side on the same examples and seeds, with `dataset.real_token_share`.

Batches are built from `dataset.example_lengths` (the longer side, as training does); the share is
then reported for the model input and for the target separately (both are padded per batch).

Data:
  sample     the bundled data/sample train split of all 12 languages (the root node's union),
             tokenized in memory by dataset.tokenize_language with the tiny byte-level tokenizer,
             prompts as dataset.make_pair builds them (no cache written).
  synthetic  an assumed AMR-to-text length distribution in mT5-like tokens (not a measurement):
             input ~ lognormal(median 120, sigma 0.55), target = 0.3 x input x lognormal(1, sigma 0.25),
             clipped to the default max lengths 512 / 256 (min 16 / 4). Long-tailed like real
             linearized AMR: a few long graphs in an otherwise short batch cost the most padding.

Run: .venv/bin/python benchmarks/padding.py   (seconds, CPU only, no Ray)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hql_ray.data.batching import length_grouped_batches, real_token_share  # noqa: E402
from hql_ray.data.dataset import DataSettings, tokenize_language  # noqa: E402
from hql_ray.training.modeling import load_tokenizer  # noqa: E402
from hql_ray.settings.tree import load_tree  # noqa: E402


def sample_lengths(data_dir: Path, tree_file: Path) -> tuple[list[int], list[int]]:
    """(input lengths, target lengths) of the train split of every language of the tree."""
    tok = load_tokenizer("tiny")
    settings = DataSettings(data_dir=str(data_dir))
    sources: list[int] = []
    targets: list[int] = []
    for lang in load_tree(tree_file).languages:
        ds = tokenize_language(settings, lang.code, lang.name, "train", tok)
        sources += [len(ids) for ids in ds["input_ids"]]
        targets += [len(ids) for ids in ds["labels"]]
    return sources, targets


def synthetic_lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """The assumed distribution documented in the module docstring."""
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(n):
        src = min(max(round(rng.lognormvariate(math.log(120), 0.55)), 16), 512)
        tgt = min(max(round(0.3 * src * rng.lognormvariate(0, 0.25)), 4), 256)
        sources.append(src)
        targets.append(tgt)
    return sources, targets


def shares(sources: list[int], targets: list[int], batch_size: int, seeds: int, group: bool) -> tuple[float, float]:
    """Mean real-token share of (inputs, targets) over `seeds` epochs' batch orders."""
    cost = [max(s, t) for s, t in zip(sources, targets)]  # dataset.example_lengths
    src, tgt = [], []
    for seed in range(seeds):
        batches = length_grouped_batches(cost, batch_size, seed=seed, group=group)
        src.append(real_token_share(sources, batches))
        tgt.append(real_token_share(targets, batches))
    return statistics.mean(src), statistics.mean(tgt)


def pct(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5, help="batch orders averaged (default 5)")
    parser.add_argument("--synthetic-n", type=int, default=20000)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "sample"))
    parser.add_argument("--tree", default=str(ROOT / "language_files" / "12langs_pthql.csv"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data = {
        "sample train, 12 langs": sample_lengths(Path(args.data_dir), Path(args.tree)),
        "synthetic (assumed)": synthetic_lengths(args.synthetic_n),
    }
    header = ["data", "side", "examples", "p50/p90/max", "ungrouped", "grouped", "grouped/ungrouped"]
    rows = []
    for name, (sources, targets) in data.items():
        plain = shares(sources, targets, args.batch_size, args.seeds, group=False)
        grouped = shares(sources, targets, args.batch_size, args.seeds, group=True)
        for side, lengths, u, g in (("input", sources, plain[0], grouped[0]),
                                    ("target", targets, plain[1], grouped[1])):
            rows.append([name, side, str(len(lengths)),
                         f"{pct(lengths, 50)}/{pct(lengths, 90)}/{max(lengths)}",
                         f"{u:.3f}", f"{g:.3f}", f"{g / u:.2f}x"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"real-token share per batch (batch size {args.batch_size}, mean of {args.seeds} seeds; "
          f"grouped = length_grouped_batches, mega-batch 50 x batch)")
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
