"""The package's shape in numbers, for issue 21's bars: lines, string-keyed dict reads (`.get("…")` and
`x["…"]` subscripts, counted on the AST, string constants only), classes over 200 lines, functions over 60
lines, and imports inside functions. Compares the working tree with a git revision (default: the commit
before the consolidation, e3d78c9):

    python benchmarks/code_shape.py [--base REV]
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Shape:
    files: int = 0
    lines: int = 0
    get_calls: int = 0  # .get("key", ...) with a string constant key
    subscripts: int = 0  # x["key"] reads and writes with a string constant key
    long_classes: int = 0  # over 200 lines
    long_functions: int = 0  # over 60 lines
    local_imports: int = 0  # import statements inside functions

    def add(self, source: str) -> None:
        tree = ast.parse(source)
        self.files += 1
        self.lines += source.count("\n")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                self.get_calls += 1
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str):
                self.subscripts += 1
            elif isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                self.long_classes += 1
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.long_functions += node.end_lineno - node.lineno + 1 > 60
                self.local_imports += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node))


def shape_of(sources: dict[str, str]) -> Shape:
    shape = Shape()
    for source in sources.values():
        shape.add(source)
    return shape


def working_tree() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in sorted((REPO / "hql_ray").rglob("*.py"))}


def at_revision(rev: str) -> dict[str, str]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "hql_ray"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="e3d78c9", help="the git revision to compare with")
    parser.add_argument("--rev", help="the revision to measure (default: the working tree)")
    args = parser.parse_args()
    before = shape_of(at_revision(args.base))
    now = shape_of(at_revision(args.rev) if args.rev else working_tree())
    print(f"| hql_ray/ | {args.base} | {args.rev or 'now'} | ratio |\n|---|---|---|---|")
    for f in fields(Shape):
        a, b = getattr(before, f.name), getattr(now, f.name)
        print(f"| {f.name} | {a} | {b} | {b / a:.2f} |" if a else f"| {f.name} | {a} | {b} | - |")
    dict_reads = (before.get_calls + before.subscripts, now.get_calls + now.subscripts)
    print(f"| .get(\"…\") + [\"…\"] | {dict_reads[0]} | {dict_reads[1]} | {dict_reads[1] / dict_reads[0]:.2f} |")


if __name__ == "__main__":
    main()
