"""Seeded FLORES-200-like language trees for the scheduler: a few big families, many small ones.

`synthetic_tree(seed)` draws ~200 languages into 3-5 levels (root, family, 0-2 levels of sub-groups,
language). Group sizes come from a Pitman-Yor (Chinese restaurant) process, whose sizes are heavy-tailed
like real families (FLORES-200: Indo-European ~75 languages, Atlantic-Congo ~40, then Afro-Asiatic,
Austronesian, ... and many with one to three). Each language's training examples are log-normal
(median 15K, clipped to 1K..62K: from a low-resource language to the paper's 31K per corpus x 2 corpora).

Every level holds every language (the tree file's format: one column per level), so a family of one
language is a chain of one-language nodes, each trained on the same data, as the driver would run it.

`write_tree_csv` and `write_sizes` export a tree for the real driver: a tree CSV (`code,level0,...,language`)
and a JSON of examples per language (`--simulate`'s `examples_per_language`).

    python benchmarks/synthetic_tree.py --seed 3 --out /tmp/t   # writes /tmp/t/tree.csv and /tmp/t/sizes.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SyntheticTree:
    seed: int
    levels: list[str]  # level0 (the root) ... language
    rows: list[dict[str, str]]  # one per language: code, every level, language
    examples: dict[str, int]  # code -> training examples

    @property
    def parents(self) -> dict[str, str | None]:
        """node id -> parent id (ids as `hql_ray.settings.tree.node_id` makes them: level.value)."""
        out: dict[str, str | None] = {}
        for row in self.rows:
            parent = None
            for level in self.levels:
                node = f"{level}.{row[level]}"
                out.setdefault(node, parent)
                parent = node
        return out

    def node_examples(self) -> dict[str, int]:
        """node id -> examples of the languages under it (what the node trains on)."""
        out: dict[str, int] = {}
        for row in self.rows:
            for level in self.levels:
                node = f"{level}.{row[level]}"
                out[node] = out.get(node, 0) + self.examples[row["code"]]
        return out


def crp_sizes(n: int, rng: random.Random, discount: float, concentration: float) -> list[int]:
    """Sizes of the groups n items fall into under a Pitman-Yor process (heavy-tailed for discount > 0)."""
    sizes: list[int] = []
    for i in range(n):
        weights = [s - discount for s in sizes] + [concentration + discount * len(sizes)]
        pick = rng.choices(range(len(weights)), weights=weights)[0] if i else 0
        if pick == len(sizes):
            sizes.append(1)
        else:
            sizes[pick] += 1
    return sorted(sizes, reverse=True)


def language_examples(rng: random.Random, median: float = 15000, sigma: float = 0.9,
                      low: int = 1000, high: int = 62000) -> int:
    return int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))


def synthetic_tree(seed: int, languages: int = 200, depth: int | None = None) -> SyntheticTree:
    """A seeded tree of `languages` languages and `depth` levels (None: 3, 4 or 5 from the seed)."""
    rng = random.Random(seed)
    depth = depth or rng.choice([3, 4, 4, 5])
    levels = ["level0"] + [f"level{i}" for i in range(1, depth - 1)] + ["language"]
    groups: list[list[int]] = [list(range(languages))]  # the root's languages
    paths: dict[int, list[str]] = {i: ["World"] for i in range(languages)}
    for level in range(1, depth - 1):
        # families are many and very uneven; sub-groups fewer per family
        discount, concentration = (0.45, 1.0) if level == 1 else (0.1, 0.4)
        next_groups = []
        for parent in groups:
            start = 0
            for k, size in enumerate(crp_sizes(len(parent), rng, discount, concentration)):
                members = parent[start:start + size]
                start += size
                name = f"{paths[members[0]][-1]}_{k}" if level > 1 else f"family{k}"
                for i in members:
                    paths[i].append(name)
                next_groups.append(members)
        groups = next_groups
    rows, examples = [], {}
    for i in range(languages):
        code = f"l{i:03d}_Synt"
        row = {"code": code, **dict(zip(levels[:-1], paths[i])), "language": f"Lang{i:03d}"}
        rows.append(row)
        examples[code] = language_examples(rng)
    return SyntheticTree(seed, levels, rows, examples)


def write_tree_csv(tree: SyntheticTree, path: Path) -> Path:
    """The tree as a tree file the driver loads (`hql_ray.settings.tree.load_tree`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["code", *tree.levels[:-1], "language"])
        writer.writeheader()
        writer.writerows(tree.rows)
    return path


def write_sizes(tree: SyntheticTree, path: Path) -> Path:
    """Examples per language as JSON ({"examples_per_language": {code: n}}: --simulate's sizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"examples_per_language": tree.examples}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--languages", type=int, default=200)
    parser.add_argument("--depth", type=int, choices=[3, 4, 5], help="levels (default: 3-5 from the seed)")
    parser.add_argument("--out", type=Path, required=True, help="folder for tree.csv and sizes.json")
    args = parser.parse_args(argv)
    tree = synthetic_tree(args.seed, args.languages, args.depth)
    write_tree_csv(tree, args.out / "tree.csv")
    write_sizes(tree, args.out / "sizes.json")
    nodes = tree.node_examples()
    print(f"seed {args.seed}: {len(tree.rows)} languages, {len(tree.levels)} levels, {len(nodes)} nodes, "
          f"{sum(tree.examples.values())} examples -> {args.out}/tree.csv, sizes.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
