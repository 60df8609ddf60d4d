"""Per-level hyper-parameter search with Ray Tune: LoRA rank and learning rate, trials ranked on val_loss.

The `tune:` section's format and parsing are `hql_ray.settings.search_space` (the config layer); this module
only runs the trials of one node. The node's manifest entry then holds the best trial's adapter,
metrics (with `trial`: its id and values) and history, and `trials`: one record per trial, {trial_id, config: {lora_r, lora_alpha,
learning_rate}, metric, value (the node's best val_loss for a finished trial, the last reported one
otherwise), status (done | stopped: ended by ASHA | error), best, validations, starts (worker-group
starts: > 1 means restarted), run (its Ray Train run name), started_at, finished_at, time, error}.
The node's `attempts` count the search's first start plus every worker-group restart, not trials.

Why it is built this way:
- Train V2 cannot be wrapped by `Tuner(trainer)`; a trial is a function that runs one node as a
  Ray Train run (`launch.make_trainer`, 1 worker, RunConfig name `<launch>.trial_<trial id>`, unique
  under the storage path so nothing resumes by accident) whose reports reach Tune through
  `TuneReportCallback`. The node reports val_loss at every validation, so ASHA can stop bad trials;
  its grace period and rungs count validations.
- Trial drivers take no CPU (TRIAL_DRIVER_RESOURCES) and at most `workers` trials of a node run at
  once: sibling nodes' searches share the slots the driver gave them and never wait on CPUs held by
  trial drivers (1 CPU per trial driver + 1 per worker deadlocks 2 CPUs silently; even 0.01 CPU each
  keeps the last 1-CPU worker group from starting).
- The best COMPLETED trial wins (lowest metric for mode min, at the node's best validation step); its
  adapter, whatever its rank, goes to the children: `stack` concatenates mixed ranks exactly and
  `continue` re-projects the parent's delta to the child's rank.
- A trial ASHA stops is killed with its Ray Train run; each trial registers its actor as the run's
  owner on the run board, which releases the run's placement group once that actor is dead
  (`RunBoard.reap`: Ray's own clean-up needs the dashboard).
- A search cut short by a dead driver is simply redone on `--resume` (new launch name, new trial ids).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import threading
import time
import zlib

from hql_ray.orchestration import launch
from hql_ray.settings.errors import HQLError
from hql_ray.settings.records import NodeResult
from hql_ray.settings.search_space import LevelSpec, Param, alpha_for, better, level_spec, trial_config


# ---- Ray side -----------------------------------------------------------------------------------
def tune_domain(param: Param):
    """A searched value as Ray Tune's search space says it."""
    from ray import tune

    if param.kind == "fixed":
        return param.values[0]
    if param.kind == "choice":
        return tune.choice(param.values)
    if param.kind == "grid":
        return tune.grid_search(param.values)
    return tune.loguniform(param.values[0], param.values[1])


def param_space(cfg, spec: LevelSpec) -> dict:
    """What a trial receives: lora_r, lora_alpha ("r" = follow r), learning_rate."""
    r = spec.lora_r or Param("fixed", [cfg.model.lora.r])
    lr = spec.learning_rate or Param("fixed", [cfg.train.learning_rate])
    alpha = tune_domain(spec.lora_alpha) if isinstance(spec.lora_alpha, Param) else "r"
    return {"lora_r": tune_domain(r), "lora_alpha": alpha, "learning_rate": tune_domain(lr)}


def _search_state_cls():
    import ray

    @ray.remote(num_cpus=0)
    class SearchState:
        """One per searched node: trials' starts and ends, and the best finished trial's result."""

        def __init__(self, board, node_id: str, metric: str, mode: str):
            self.board, self.node_id, self.metric, self.mode = board, node_id, metric, mode
            self.trials: dict[str, dict] = {}
            self.best_id: str | None = None
            self.best: dict | None = None
            self.forwarded = 0

        def began(self, trial_id: str, params: dict, run_name: str) -> None:
            self.trials.setdefault(trial_id, {"params": params, "run": run_name, "started_at": time.time(),
                                              "starts": 0})

        def started(self, trial_id: str, node_id: str, info: dict) -> None:
            """A (re)start of a trial's rank 0. The run board hears of the node's first start and of every
            restart, so the node's `attempts` stays 1 + worker-group restarts, whatever the trial count."""
            entry = self.trials.setdefault(trial_id, {"started_at": time.time(), "starts": 0})
            entry["starts"] += 1
            if self.board is not None and (self.forwarded == 0 or entry["starts"] > 1):
                self.forwarded += 1
                ray.get(self.board.started.remote(node_id, {**info, "trial": trial_id}))

        def finished(self, trial_id: str, result: NodeResult | None, error: str | None) -> None:
            entry = self.trials.setdefault(trial_id, {"starts": 0})
            entry["finished_at"] = time.time()
            if error is not None or result is None:
                entry["error"] = error or "training returned nothing"
                return
            value = (result.metrics or {}).get(self.metric)
            entry["value"] = value
            entry["completed"] = True
            if value is not None and better(float(value), None if self.best is None else self._best_value(), self.mode):
                self.best_id, self.best = trial_id, copy.deepcopy(result)  # own copy: the sender may exit

        def _best_value(self):
            return (self.best.metrics or {}).get(self.metric)

        def summary(self) -> dict:
            return {"trials": self.trials, "best_id": self.best_id}

        def best_result(self) -> dict | None:
            return self.best

    return SearchState


class _Call:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return self._fn(*args)


class TrialBoard:
    """Stands in for the run board inside a trial's workers (same `.started/.progress.remote` calls):
    progress goes to the run board tagged with the trial; starts go to the search state."""

    def __init__(self, board, state, trial_id: str):
        self._board, self._state, self._trial = board, state, trial_id

    @property
    def started(self):
        return _Call(lambda node_id, info: self._state.started.remote(self._trial, node_id, info))

    @property
    def progress(self):
        def send(node_id, update):
            if self._board is not None:
                return self._board.progress.remote(node_id, {**update, "trial": self._trial})
            return None

        return _Call(send)

    @property
    def run_started(self):
        def send(run, node_id, _trial, pg):
            return None if self._board is None else self._board.run_started.remote(run, node_id, self._trial, pg)

        return _Call(send)


def _report_callback(metric: str):
    """TuneReportCallback, adapted: the node's final {"done": True} must not end the trial early
    (Tune stops a trial on `done`), every result must carry the metric (Tune checks it strictly), and
    `validation` counts validations so that ASHA's rungs are in validations."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class NodeToTune(TuneReportCallback):
        def __init__(self):
            super().__init__()
            self.validations = 0
            self.last = float("nan")

        def after_report(self, run_context, metrics, checkpoint):
            first = dict(metrics[0])
            node_done = bool(first.pop("done", False))
            if metric in first and not node_done:
                self.validations += 1
                self.last = first[metric]
            first.setdefault(metric, self.last)
            first["validation"] = self.validations
            first["node_done"] = node_done
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return NodeToTune()


def _asha_cls():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers whom it stopped: a stopped trial is not a failed one."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped: set[str] = set()

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP:
                self.stopped.add(trial.trial_id)
            return action

    return RecordingASHA


# A trial's own actor only waits on its Ray Train run: no CPU, so that N trials fit N CPU slots exactly
# (even 0.01 CPU each leaves 1.98 of 2 CPUs, and the second 1-CPU worker group never starts). A bundle
# needs some nonzero resource: a little memory, which nothing else of ours reserves.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}
_REGISTER_LOCK = threading.Lock()  # Tune's trainable registry is not thread-safe; siblings search at once


def search_node(cfg, job: launch.NodeJob) -> NodeResult:
    """Run the node's trials with Ray Tune; return the best trial's node result plus every trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The legacy reporter is the one that verbose=0 silences: the driver draws its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    spec = level_spec(cfg, job.node.level)
    if spec is None:
        raise HQLError(f"level {job.node.level} is not searched")
    node_id, name, board = job.node.id, job.name, job.board
    here = ray.get_runtime_context().get_node_id()
    state = _search_state_cls().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)  # lives with the driver
    ).remote(board, node_id, spec.metric, spec.mode)

    def trial(params: dict) -> None:
        trial_id = tune.get_context().get_trial_id()
        run_name = f"{name}.trial_{trial_id}"  # unique under the storage path: a reused name would resume
        ray.get(state.began.remote(trial_id, dict(params), run_name))
        trial_job = dataclasses.replace(job, cfg=trial_config(job.cfg, params), workers=1, name=run_name, keeper=None,
                                        board=TrialBoard(board, state, trial_id))
        trainer = launch.make_trainer(trial_job, callbacks=[_report_callback(spec.metric)])
        result, error = None, None
        try:
            # This trial's actor owns the run: when ASHA stops the trial, the actor is killed and the
            # board releases the run's placement group (see RunBoard.reap).
            fit = launch.run_fit(trainer, trial_job, board=board, trial=trial_id,
                                 owner=ray.get_runtime_context().current_actor)
            if fit.error is not None:
                raise fit.error
            result = fit.return_value
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded; Tune retries only lost trial drivers
            error = f"{type(err).__name__}: {err}"[:2000]
        ray.get(state.finished.remote(trial_id, result, error))

    trainable_name = f"hql_trial.{name}"
    with _REGISTER_LOCK:
        tune.register_trainable(trainable_name, tune.with_resources(trial, TRIAL_DRIVER_RESOURCES))
    if spec.scheduler == "asha":
        scheduler = _asha_cls()(time_attr="validation", grace_period=spec.grace_period,
                                reduction_factor=spec.reduction_factor, max_t=spec.max_t, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    # At most `workers` trials at once (1 worker each): the slots the driver gave this node, no more.
    concurrent = spec.max_concurrent_trials or max(1, job.workers)
    seed = None if spec.seed is None else zlib.crc32(f"{spec.seed}:{node_id}".encode())  # siblings differ
    tuner = tune.Tuner(
        trainable_name,
        param_space=param_space(cfg, spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(
            name=f"{name}.tune", storage_path=job.storage, verbose=0,
            # A trial driver lost with its machine is retried; its Train run resumes from its checkpoint.
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
        ),
    )
    grid = tuner.fit()
    summary = ray.get(state.summary.remote())
    summary["stopped"] = set(getattr(scheduler, "stopped", ()))
    best = ray.get(state.best_result.remote())
    trials = trial_records(grid, summary, spec)
    ray.kill(state)
    if best is None:
        problems = "; ".join(f"{t['trial_id']}: {t['status']} {t.get('error') or ''}".strip() for t in trials)
        raise HQLError(f"node {node_id}: no trial of the search finished ({problems})")
    chosen = next(t for t in trials if t["trial_id"] == summary["best_id"])
    metrics = {**(best.metrics or {}), "trial": {"trial_id": chosen["trial_id"], **chosen["config"]}}
    return dataclasses.replace(best, metrics=metrics, trials=trials)


def trial_records(grid, summary: dict, spec: LevelSpec) -> list[dict]:
    """One plain dict per trial for the manifest: id, config, metric, status, times, restarts."""
    records = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or next(
            (t for t in summary["trials"] if t in str(result.path or "")), "unknown")
        entry = summary["trials"].get(trial_id, {})
        params = entry.get("params") or dict(result.config or {})
        r = int(params.get("lora_r", 0))
        config = {"lora_r": r, "lora_alpha": alpha_for(r, params.get("lora_alpha", "r")),
                  "learning_rate": float(params.get("learning_rate", 0.0))}
        error = entry.get("error") or (None if result.error is None else str(result.error)[:2000])
        if entry.get("completed"):
            status, value = "done", entry.get("value")
        elif trial_id in summary.get("stopped", ()):
            # ASHA ended it early (its Train run then dies with the trial: that error is not one).
            status, value, error = "stopped", metrics.get(spec.metric), None
        else:
            status, value = "error", metrics.get(spec.metric)
        finished = entry.get("finished_at") or metrics.get("timestamp")
        records.append({
            "trial_id": trial_id,
            "config": config,
            "metric": spec.metric,
            "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            "status": status,
            "best": trial_id == summary.get("best_id"),
            "validations": metrics.get("validation"),
            "starts": entry.get("starts", 0),
            "run": entry.get("run"),
            "started_at": entry.get("started_at"),
            "finished_at": finished,
            "time": None if not (finished and entry.get("started_at")) else round(finished - entry["started_at"], 2),
            "error": error,
        })
    records.sort(key=lambda t: t["trial_id"])
    return records
