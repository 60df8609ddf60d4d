"""The run record: OUTPUT/RUN_NAME/manifest.json, rewritten atomically after every change.

Only the driver writes it (one thread). A reader always sees a complete JSON file: we write a temp
file in the same folder, fsync it, then `os.replace` it over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from hql_ray.tree import LanguageTree

STATUSES = ("pending", "running", "done", "failed")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; the record is for everyone who reads the run
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class Manifest:
    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = data

    # ---- creation / loading -------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, tree: LanguageTree, config: dict, run_name: str) -> "Manifest":
        nodes = {}
        for node in tree.nodes.values():
            nodes[node.id] = {
                "id": node.id,
                "name": node.name,
                "level": node.level,
                "depth": node.depth,
                "parent": node.parent,
                "children": list(node.children),
                "languages": [lang.code for lang in node.languages],
                "status": "pending",
                "started_at": None,
                "finished_at": None,
                "resources": None,
                "attempts": 0,
                "adapter": None,
                "metrics": None,
            }
        data = {
            "run": run_name,
            "created_at": time.time(),
            "updated_at": time.time(),
            "status": "running",
            "tree": {"file": tree.path, "levels": tree.levels},
            "config": config,
            "nodes": nodes,
        }
        manifest = cls(path, data)
        manifest.save()
        return manifest

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        return cls(path, json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self) -> None:
        self.data["updated_at"] = time.time()
        atomic_write_json(self.path, self.data)

    # ---- updates --------------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, dict]:
        return self.data["nodes"]

    def update(self, node_id: str, **fields) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"bad status {fields['status']!r}")
        self.nodes[node_id].update(fields)
        self.save()

    def set_run_status(self, status: str, **extra) -> None:
        self.data["status"] = status
        self.data.update(extra)
        self.save()
