"""The package's shape, read from its folders: every module in a layer folder (`hql_ray.LAYERS`), imports
pointing only down or within a layer, no import circle, Ray only at the orchestration edge, no private
name used across modules, and short functions and classes (in benchmarks/ too)."""

from __future__ import annotations

import ast
from pathlib import Path

import hql_ray

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hql_ray"
TOP_LEVEL = {"__init__", "__main__", "cli"}  # the package's entry points, above every layer
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200
# Layers that may import Ray (orchestration and what is built on it).
RAY_LAYERS = {"orchestration", "serving", "prep", "commands"}


def layer_of() -> dict[str, int]:
    out = {}
    for rank, layer in enumerate(hql_ray.LAYERS):
        for name in (layer if isinstance(layer, tuple) else (layer,)):
            out[name] = rank
    return out


def modules() -> dict[str, Path]:
    """Dotted module name (hql_ray.settings.config, hql_ray.data.corpus) -> file."""
    return {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def hql_imports(path: Path) -> set[str]:
    """The hql_ray modules a file imports (at the top or inside functions alike), as dotted names."""
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hql_ray"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known or f"{full}.__init__" in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hql_ray")}
    return {m for m in found if m.count(".") >= 2}


def test_every_module_is_in_a_layer_folder():
    layers = layer_of()
    stray = [m for m in modules() if m.split(".")[-1] not in TOP_LEVEL and layer(m) not in layers]
    assert not stray, f"put these in one of the layer folders {hql_ray.LAYERS}: {stray}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(layers)


def test_imports_point_down_and_never_circle():
    layers = layer_of()
    graph = {m: {t for t in hql_imports(p) if t != m} for m, p in modules().items() if layer(m)}
    upward = [f"{m} imports {t}" for m, targets in graph.items() for t in targets
              if layer(t) and layers[layer(t)] > layers[layer(m)]]
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


def test_ray_only_at_the_orchestration_edge():
    found = []
    for m, path in modules().items():
        if layer(m) in RAY_LAYERS or layer(m) is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{m}:{node.lineno} imports {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not found


def test_no_private_names_across_modules():
    found = []
    for m, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hql_ray"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{m}:{node.lineno} imports {node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("hql_ray")})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] in modules()):
                found.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not found


def long_definitions(roots: list[Path]) -> list[str]:
    long = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
                limit = (MAX_FUNCTION_LINES if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                         else MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else None)
                if limit is not None and size > limit:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({size} lines)")
    return long


def test_short_functions_and_classes():
    assert not long_definitions([PACKAGE, REPO / "benchmarks"])
