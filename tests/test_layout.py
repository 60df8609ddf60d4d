"""The package's shape, as hql_ray/__init__.py describes it: every module in a layer, imports pointing only
down (or within a layer), no import circle, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hql_ray"
LAYERS = {
    1: "errors config search_space tree amr corpus records",
    2: "dataset batching tensorfile",
    3: "modeling handoff node context adafactor losses evaluation metrics flops tiny_pretrain tracking memory reevaluate",
    4: "manifest results export export_modes model_card report plots progress generate",
    5: "driver cluster scheduling launch ray_worker tune board watch placement preflight simulate plan keeper warm",
    6: "datacheck translate parse_amr sample tiny_nllb seq2seq_actor sharded infer_cli",
    7: "cli commands __main__",
}
LAYER = {module: n for n, names in LAYERS.items() for module in names.split()}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, list[Path]]:
    """Top-level module (a sub-package counts as one) -> its files."""
    out: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).with_suffix("").parts[0]
        if top != "__init__":
            out.setdefault(top, []).append(path)
    return out


def imports(path: Path) -> set[str]:
    """The hql_ray modules a file imports (at the top or inside functions alike)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hql_ray":
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("hql_ray.")}
    return found


def test_every_module_has_a_layer():
    unassigned = sorted(set(modules()) - set(LAYER))
    assert not unassigned, f"give these modules a layer here and in hql_ray/__init__.py: {unassigned}"


def test_imports_point_down_and_never_circle():
    graph = {m: set().union(*(imports(p) for p in files)) & set(LAYER) - {m} for m, files in modules().items()}
    upward = [f"{m} (layer {LAYER[m]}) imports {t} (layer {LAYER[t]})"
              for m, targets in graph.items() for t in targets if LAYER[t] > LAYER[m]]
    assert not upward
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path + [m, t]
            if not state.get(t) and (cycle := visit(t, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in graph:
        if not state.get(m):
            assert (cycle := visit(m, [])) is None, " -> ".join(cycle)


def test_no_function_over_80_lines():
    long = []
    for files in modules().values():
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long
