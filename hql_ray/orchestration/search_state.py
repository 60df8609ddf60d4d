"""What a run knows of its searches' trials: one `Searches` actor for the run, on the driver's machine.

Each searched node's `SearchState` counts its trials' starts and ends and writes every finished trial's result
under the node's trials folder (read back when a search resumes). All of them live in one actor for the run,
and this module imports nothing of Ray Train, Tune or torch, so that actor is a bare Ray worker: one actor per
searched node, importing `tune`'s Ray Train and torch, held ~390 MB each on the head (17 searched siblings:
6.6 GB); benchmarks/README.md, "a searched level".
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import ray

from hql_ray.orchestration.board import Attempt
from hql_ray.outputs.manifest import atomic_write_json
from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeResult, TrialChoice
from hql_ray.settings.search_space import better

RESULT_FILE = "result.json"


@dataclasses.dataclass
class TrialState:
    """What the search state knows of one trial."""

    choice: TrialChoice | None = None
    run: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    starts: int = 0
    value: float | None = None
    completed: bool = False
    error: str | None = None


class SearchState:
    """One searched node's trials: their starts and ends, every finished trial's result written under the
    node's trials folder (read back when a search resumes)."""

    def __init__(self, board, node_id: str, metric: str, mode: str, folder: str):
        self.board, self.node_id, self.metric, self.mode = board, node_id, metric, mode
        self.folder = Path(folder)
        self.trials: dict[str, TrialState] = {}
        self.results: dict[str, NodeResult] = {}
        self.forwarded = 0
        for path in sorted(self.folder.glob(f"*/{RESULT_FILE}")):  # a resumed search: finished trials
            self._read(path)

    def _read(self, path: Path) -> None:
        data = json.loads(path.read_text())
        result = NodeResult(None, NodeMetrics.from_json(data["metrics"]),
                            [HistoryPoint.from_json(h) for h in data["history"]],
                            kept_checksum=data.get("kept_checksum"))
        trial_id = path.parent.name
        self.results[trial_id] = result
        self.trials[trial_id] = TrialState(TrialChoice.from_json(data.get("choice")), data.get("run"),
                                           data.get("started_at"), data.get("finished_at"), data.get("starts", 1),
                                           self._value(result), True)

    def _value(self, result: NodeResult) -> float | None:
        value = getattr(result.metrics, self.metric, None)
        return None if value is None else float(value)

    def kept_report(self, trial_id: str) -> dict | None:
        """A trial whose result is already here (it has just finished, or a resumed search: written before the
        driver was lost): its last report to Tune (the metric, and `validation` as the report callback counts
        it); else None."""
        if trial_id not in self.results:
            return None
        # (the initial loss, at step 0, is not a validation the node reported)
        validations = sum(1 for h in self.results[trial_id].history if h.val_loss is not None and h.step > 0)
        value = self.trials[trial_id].value
        return {self.metric: float("nan") if value is None else value, "validation": validations}

    def began(self, trial_id: str, choice: TrialChoice, run_name: str) -> None:
        entry = self.trials.setdefault(trial_id, TrialState())
        entry.choice, entry.run = choice, run_name
        entry.started_at = entry.started_at or time.time()

    def started(self, trial_id: str, node_id: str, attempt: Attempt) -> None:
        """A (re)start of a trial's rank 0. The run board hears of the node's first start and of every
        restart, so the node's `attempts` stays 1 + worker-group restarts, whatever the trial count."""
        entry = self.trials.setdefault(trial_id, TrialState(started_at=time.time()))
        entry.starts += 1
        if self.board is not None and (self.forwarded == 0 or entry.starts > 1):
            self.forwarded += 1
            ray.get(self.board.started.remote(node_id, dataclasses.replace(attempt, trial=trial_id)))

    def finished(self, trial_id: str, result: NodeResult | None, error: str | None) -> None:
        entry = self.trials.setdefault(trial_id, TrialState())
        entry.finished_at = time.time()
        if error is not None or result is None:
            entry.error = error or "training returned nothing"
            return
        entry.value, entry.completed = self._value(result), True
        self.results[trial_id] = result
        record = {"metrics": result.metrics.to_json(), "history": [h.to_json() for h in result.history],
                  "kept_checksum": result.kept_checksum, "choice": entry.choice and entry.choice.to_json(),
                  "run": entry.run, "started_at": entry.started_at, "finished_at": entry.finished_at,
                  "starts": entry.starts}
        atomic_write_json(self.folder / trial_id / RESULT_FILE, record)

    def best(self) -> str | None:
        """The finished trial with the best metric (ties: the lower trial id)."""
        best_id = None
        for trial_id in sorted(self.results):
            value = self.trials[trial_id].value
            if value is not None and better(value, None if best_id is None else self.trials[best_id].value,
                                            self.mode):
                best_id = trial_id
        return best_id

    def summary(self) -> tuple[dict[str, TrialState], str | None]:
        return self.trials, self.best()

    def result(self, trial_id: str) -> NodeResult:
        return self.results[trial_id]


class Searches:
    """Every search of a run in flight, by node: the `SearchState`s, in one actor (`start`)."""

    def __init__(self, board):
        self.board = board
        self.states: dict[str, SearchState] = {}

    def open(self, node_id: str, metric: str, mode: str, folder: str) -> None:
        """A node's search begins (again: a resumed search reads its finished trials back from `folder`)."""
        self.states[node_id] = SearchState(self.board, node_id, metric, mode, folder)

    def close(self, node_id: str) -> None:
        self.states.pop(node_id, None)

    def kept_report(self, node_id: str, trial_id: str) -> dict | None:
        return self.states[node_id].kept_report(trial_id)

    def began(self, node_id: str, trial_id: str, choice: TrialChoice, run_name: str) -> None:
        self.states[node_id].began(trial_id, choice, run_name)

    def started(self, node_id: str, trial_id: str, attempt: Attempt) -> None:
        self.states[node_id].started(trial_id, node_id, attempt)

    def finished(self, node_id: str, trial_id: str, result: NodeResult | None, error: str | None) -> None:
        self.states[node_id].finished(trial_id, result, error)

    def summary(self, node_id: str) -> tuple[dict[str, TrialState], str | None]:
        return self.states[node_id].summary()

    def result(self, node_id: str, trial_id: str) -> NodeResult:
        return self.states[node_id].result(trial_id)


def start(board, node_id: str):
    """The run's Searches actor, on Ray node `node_id` (the driver's machine, which holds the run folder)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(num_cpus=0)(Searches).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(board)


@dataclasses.dataclass
class NodeSearch:
    """One node's calls to the run's Searches actor (ObjectRefs, as the actor's own methods return)."""

    searches: Any
    node_id: str

    def kept_report(self, trial_id: str):
        return self.searches.kept_report.remote(self.node_id, trial_id)

    def began(self, trial_id: str, choice: TrialChoice, run_name: str):
        return self.searches.began.remote(self.node_id, trial_id, choice, run_name)

    def started(self, trial_id: str, attempt: Attempt):
        return self.searches.started.remote(self.node_id, trial_id, attempt)

    def finished(self, trial_id: str, result: NodeResult | None, error: str | None):
        return self.searches.finished.remote(self.node_id, trial_id, result, error)

    def summary(self):
        return self.searches.summary.remote(self.node_id)

    def result(self, trial_id: str):
        return self.searches.result.remote(self.node_id, trial_id)
