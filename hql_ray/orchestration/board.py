"""A tiny actor that workers report to: (re)starts of each node (attempt counting), live progress, and
the life of every Ray Train run we launch (waiting for resources, running, over) with its placement groups.

It needs no CPU and holds only small dicts; the driver polls it for the live tree view, for runs that
wait too long, and to release what a stopped Tune trial left behind (see `reap`).
"""

from __future__ import annotations

import time
from collections import defaultdict

import ray

from hql_ray.orchestration import placement


@ray.remote(num_cpus=0)
class RunBoard:
    def __init__(self):
        self._starts: dict[str, list[dict]] = defaultdict(list)
        self._progress: dict[str, dict] = {}
        # Ray Train run name -> {node, trial, wants, since, phase: waiting|running|over, owner, pgs, ping}.
        # Its callers (the driver or a trial, rank 0, the driver again) are different processes, so
        # their calls may arrive in any order: a run's phase only ever moves forward.
        self._runs: dict[str, dict] = {}

    # ---- nodes: attempts and live progress ----------------------------------------------------------
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

    # ---- Ray Train runs -----------------------------------------------------------------------------
    def _run(self, run: str, node_id: str, trial: str | None) -> dict:
        entry = self._runs.setdefault(run, {"node": node_id, "trial": trial, "wants": None, "since": time.time(),
                                            "phase": "waiting", "owner": None, "pgs": [], "ping": None})
        entry["trial"] = entry["trial"] or trial
        return entry

    def _advance(self, entry: dict, phase: str) -> None:
        order = ("waiting", "running", "over")
        if order.index(phase) > order.index(entry["phase"]):
            entry["phase"] = phase

    def run_waiting(self, run: str, node_id: str, trial: str | None, wants: dict, owner=None) -> None:
        """Called just before `fit()`. `owner` is the actor that calls it (a Tune trial), None for the driver."""
        entry = self._run(run, node_id, trial)
        entry["wants"], entry["owner"] = wants, owner

    def run_started(self, run: str, node_id: str, trial: str | None, pg) -> None:
        """Rank 0 of a (re)started worker group: the run holds `pg` (None outside a placement group)."""
        entry = self._run(run, node_id, trial)
        self._advance(entry, "running")
        if pg is not None and entry["phase"] == "running":
            entry["pgs"].append(pg)

    def run_over(self, run: str) -> None:
        if run in self._runs:
            self._advance(self._runs[run], "over")

    def waits(self) -> dict:
        """Runs still waiting for their workers, and how many of ours are running meanwhile."""
        waiting = [{"run": run, "node": e["node"], "trial": e["trial"], "wants": e["wants"], "since": e["since"]}
                   for run, e in self._runs.items() if e["phase"] == "waiting" and e["wants"] is not None]
        running = sum(1 for e in self._runs.values() if e["phase"] == "running")
        return {"waiting": waiting, "running": running}

    def holders(self) -> dict[str, str]:
        """Placement group id (hex) -> which run of ours made it, for naming what holds resources."""
        out = {}
        for e in self._runs.values():
            label = e["node"] + (f" trial {e['trial']}" if e["trial"] else "")
            state = {"over": "its run is over", "running": "running", "waiting": "starting"}[e["phase"]]
            for pg in e["pgs"]:
                out[pg.id.hex()] = f"{label} ({state})"
        return out

    def reap(self) -> list[str]:
        """Remove the placement groups of runs whose caller is gone; returns what was released.

        Why: a Tune trial stopped by ASHA (or lost) is killed with its Ray Train controller, and the
        controller's placement group outlives both (it belongs to the job). Ray Train's own
        PlacementGroupCleaner removes it only where the dashboard's state API answers, which a laptop
        Ray started without a dashboard does not (ray-project/ray#54305, fixed by #58515 only for
        clusters with a dashboard). Without this, the freed CPU/GPU never returns and the next run waits
        forever.
        """
        released = []
        for run, e in self._runs.items():
            if not e["pgs"] or e["owner"] is None or not self._owner_gone(e):
                continue
            label = e["node"] + (f" trial {e['trial']}" if e["trial"] else "")
            for pg in e["pgs"]:
                if placement.release(pg):
                    released.append(f"{label}: placement group {pg.id.hex()}")
            e["pgs"], e["phase"] = [], "over"
        return released

    def unreleased(self) -> int:
        """Placement groups of trial runs that Ray has not removed yet (their trial may still be dying)."""
        return sum(placement.is_alive(pg) for e in self._runs.values() if e["owner"] is not None for pg in e["pgs"])

    def _owner_gone(self, e: dict) -> bool:
        """True once the actor that ran `fit()` is dead (its controller dies with it)."""
        if e["ping"] is None:
            e["ping"] = e["owner"].__ray_ready__.remote()
        ready, _ = ray.wait([e["ping"]], timeout=0)
        if not ready:
            return False  # busy or starting: ask again next time
        try:
            ray.get(e["ping"])
        except ray.exceptions.RayActorError:
            return True
        e["ping"] = None  # alive; ping again next time
        return False
