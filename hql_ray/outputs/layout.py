"""Where a run folder keeps what people ship: final/<code>/ for a language's model, final/nodes/<node id>/
for an inner node's own model (export.nodes all). Paths relative to the run folder unless one is given."""

from __future__ import annotations

from pathlib import Path

FINAL = "final"
NODES = "nodes"  # final/nodes/: never a language code's folder clash (a node id always holds a dot)


def language_dir(code: str, run_dir: str | Path = "") -> Path:
    return Path(run_dir) / FINAL / code


def node_dir(node_id: str, run_dir: str | Path = "") -> Path:
    return Path(run_dir) / FINAL / NODES / node_id
