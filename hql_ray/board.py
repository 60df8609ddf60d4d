"""A tiny actor that workers report to: (re)starts of each node (attempt counting) and live progress.

It needs no CPU and holds only small dicts; the driver polls it for the live tree view.
"""

from __future__ import annotations

import time
from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class RunBoard:
    def __init__(self):
        self._starts: dict[str, list[dict]] = defaultdict(list)
        self._progress: dict[str, dict] = {}

    def started(self, node_id: str, info: dict) -> None:
        self._starts[node_id].append(info)

    def attempts(self, node_id: str) -> int:
        return len(self._starts.get(node_id, []))

    def progress(self, node_id: str, update: dict) -> None:
        merged = dict(self._progress.get(node_id, {}))
        merged.update(update)
        merged["time"] = time.time()
        self._progress[node_id] = merged

    def snapshot(self) -> dict[str, dict]:
        return dict(self._progress)
