"""A tiny actor that workers report to: (re)starts of each node (attempt counting), live progress, and
the life of every Ray Train run we launch (waiting for resources, running, over) with its placement groups.

It needs no CPU and holds only small dicts; the driver polls it for the live tree view, for runs that
wait too long, and to release what a stopped Tune trial left behind (see `reap`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray

from hql_ray.orchestration import placement
from hql_ray.settings.records import Progress, WorkerInfo

PHASES = ("waiting", "running", "over")  # a run's phase only ever moves forward
# What `RunBoard.checkpoint_requested` answers a node: go on, the run is stopping (SIGTERM: a checkpoint now,
# then go on until stopped), or pause (resources.elastic: a checkpoint now, then end the run to be resized).
GO_ON, STOP, PAUSE = 0, 1, 2


@dataclass
class Attempt:
    """One (re)start of a node's worker group (or of a trial's)."""

    workers: list[WorkerInfo]
    time: float
    trial: str | None = None


@dataclass
class RunEntry:
    """A Ray Train run we launched, as the board follows it."""

    node: str
    trial: str | None = None
    wants: dict | None = None  # workers and per-worker resources
    since: float = field(default_factory=time.time)
    phase: str = "waiting"
    owner: Any = None  # the actor that called fit() (a Tune trial), None for the driver
    pgs: list = field(default_factory=list)  # its placement groups
    ping: Any = None

    @property
    def label(self) -> str:
        return self.node + (f" trial {self.trial}" if self.trial else "")

    def advance(self, phase: str) -> None:
        if PHASES.index(phase) > PHASES.index(self.phase):
            self.phase = phase


@dataclass
class Wait:
    """A run still waiting for its workers' resources."""

    run: str
    node: str
    trial: str | None
    wants: dict
    since: float


@ray.remote(num_cpus=0)
class RunBoard:
    def __init__(self):
        self._starts: dict[str, list[Attempt]] = defaultdict(list)
        self._progress: dict[str, Progress] = {}
        # Ray Train run name -> its entry. Its callers (the driver or a trial, rank 0, the driver again) are
        # different processes, so their calls may arrive in any order: a run's phase only ever moves forward.
        self._runs: dict[str, RunEntry] = {}
        self._stop_requested = False  # SIGTERM reached the driver: nodes in flight checkpoint now
        self._checkpointed: dict[str, int] = {}  # node -> the step of the checkpoint it wrote on that request
        self._pauses: set[str] = set()  # nodes asked to checkpoint and end their run, to be resized (elastic)

    # ---- nodes: attempts and live progress ----------------------------------------------------------
    def started(self, node_id: str, attempt: Attempt) -> None:
        self._starts[node_id].append(attempt)

    def attempts(self, node_id: str) -> int:
        return len(self._starts.get(node_id, []))

    def progress(self, node_id: str, update: Progress) -> None:
        merged = self._progress.get(node_id, Progress(node=node_id)).merged(update)
        merged.time = time.time()
        self._progress[node_id] = merged

    def snapshot(self) -> dict[str, Progress]:
        return dict(self._progress)

    # ---- a stop: every node in flight writes a checkpoint -------------------------------------------
    def request_checkpoint(self) -> None:
        self._stop_requested = True

    def checkpoint_requested(self, node_id: str = "") -> int:
        """GO_ON, STOP (the whole run) or PAUSE (this node, for a resize); a stop wins over a pause."""
        if self._stop_requested:
            return STOP
        return PAUSE if node_id in self._pauses else GO_ON

    def request_pause(self, node_id: str) -> None:
        """resources.elastic: `node_id` writes a checkpoint at its next log step and ends its run; the driver
        then launches it again on more workers, from that checkpoint."""
        self._pauses.add(node_id)

    def pause_over(self, node_id: str) -> None:
        self._pauses.discard(node_id)

    def checkpointed(self, node_id: str, step: int) -> None:
        self._checkpointed[node_id] = step

    def checkpoints(self) -> dict[str, int]:
        return dict(self._checkpointed)

    # ---- Ray Train runs -----------------------------------------------------------------------------
    def _run(self, run: str, node_id: str, trial: str | None) -> RunEntry:
        entry = self._runs.setdefault(run, RunEntry(node_id, trial))
        entry.trial = entry.trial or trial
        return entry

    def run_waiting(self, run: str, node_id: str, trial: str | None, wants: dict, owner=None) -> None:
        """Called just before `fit()`. `owner` is the actor that calls it (a Tune trial), None for the driver."""
        entry = self._run(run, node_id, trial)
        entry.wants, entry.owner = wants, owner

    def run_started(self, run: str, node_id: str, trial: str | None, pg) -> None:
        """Rank 0 of a (re)started worker group: the run holds `pg` (None outside a placement group)."""
        entry = self._run(run, node_id, trial)
        entry.advance("running")
        if pg is not None and entry.phase == "running":
            entry.pgs.append(pg)

    def run_over(self, run: str) -> None:
        if run in self._runs:
            self._runs[run].advance("over")

    def waits(self) -> tuple[list[Wait], int]:
        """Runs still waiting for their workers, and how many of ours are running meanwhile."""
        waiting = [Wait(run, e.node, e.trial, e.wants, e.since)
                   for run, e in self._runs.items() if e.phase == "waiting" and e.wants is not None]
        return waiting, sum(1 for e in self._runs.values() if e.phase == "running")

    def watch(self) -> tuple[list[str], list[Wait], int]:
        """The driver's watch in one call (`RunWatch.tick`): what `reap` released, then `waits`."""
        return (self.reap(), *self.waits())

    def holders(self) -> dict[str, str]:
        """Placement group id (hex) -> which run of ours made it, for naming what holds resources."""
        states = {"over": "its run is over", "running": "running", "waiting": "starting"}
        return {pg.id.hex(): f"{e.label} ({states[e.phase]})" for e in self._runs.values() for pg in e.pgs}

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
        for e in self._runs.values():
            if not e.pgs or e.owner is None or not self._owner_gone(e):
                continue
            released += [f"{e.label}: placement group {pg.id.hex()}" for pg in e.pgs if placement.release(pg)]
            e.pgs, e.phase = [], "over"
        return released

    def unreleased(self) -> int:
        """Placement groups of trial runs that Ray has not removed yet (their trial may still be dying)."""
        return sum(placement.is_alive(pg) for e in self._runs.values() if e.owner is not None for pg in e.pgs)

    def _owner_gone(self, e: RunEntry) -> bool:
        """True once the actor that ran `fit()` is dead (its controller dies with it)."""
        if e.ping is None:
            e.ping = e.owner.__ray_ready__.remote()
        ready, _ = ray.wait([e.ping], timeout=0)
        if not ready:
            return False  # busy or starting: ask again next time
        try:
            ray.get(e.ping)
        except ray.exceptions.RayActorError:
            return True
        e.ping = None  # alive; ping again next time
        return False
