"""The install is honest: every package the code imports is declared, the lock pins all of them (and no
CUDA wheel), and the environment the tests run in is the locked one."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / ".ci" / "requirements.lock"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0])


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_requirement_name(s) for s in specs}


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: {line!r} is not pinned with =="
            pins[_norm(name)] = version.strip()
    return pins


def imported_top_levels() -> set[str]:
    names = set()
    for path in (REPO / "hql_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"hql_ray", "__future__"}


def test_every_imported_package_is_declared():
    providers = md.packages_distributions()
    missing = {}
    for module in sorted(imported_top_levels()):
        dists = {_norm(d) for d in providers.get(module, [])}
        assert dists, f"hql_ray imports {module!r}, which no installed distribution provides"
        if not dists & declared():
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_lock_pins_every_declared_package_and_no_cuda_wheel():
    pins = locked()
    assert not [n for n in pins if n.startswith(("nvidia-", "triton"))]
    assert "torch" not in pins  # installed first, as the CPU (or the user's CUDA) build
    assert declared() - {"torch", "hql-ray"} <= set(pins)


def test_the_test_environment_is_the_locked_one():
    wrong = {}
    for name in sorted(declared() - {"torch", "hql-ray"}):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            wrong[name] = "not installed"
            continue
        if installed != locked()[name]:
            wrong[name] = f"{installed} installed, {locked()[name]} locked"
    assert not wrong, wrong
