"""Per-level hyper-parameter search with Ray Tune: LoRA rank and learning rate, trials ranked on val_loss.

The `tune:` section's format and parsing are `hql_ray.settings.search_space` (the config layer); this module
runs the trials of one node. The node's manifest entry then holds the best trial's metrics (with `trial`:
its id and values) and history, and `trials`: one `TrialRecord` per trial. Its `attempts` count the
search's first start plus every worker-group restart, not trials.

Why it is built this way:
- Train V2 cannot be wrapped by `Tuner(trainer)`; a trial is a function that runs one node as a
  Ray Train run (`launch.make_trainer`, 1 worker, run name `<node run>.trial_<trial id>`) whose reports
  reach Tune through `TuneReportCallback`. The node reports val_loss at every validation, so ASHA can
  stop bad trials; its grace period and rungs count validations.
- Every trial's rank 0 hands its adapter to the run's keeper, saved under nodes/<id>/trials/<trial id>/,
  and the node's search state (`search_state`: one actor for the run's searches) writes each finished
  trial's result beside it: the best trial's adapter becomes the node's (`AdapterKeeper.adopt`) without
  passing through the driver.
- A search cut short by a lost driver resumes (`Tuner.restore`, same experiment and trial run names):
  finished trials are not run again (their results are read back from the run folder), unfinished ones
  continue from their Ray Train checkpoints, and the best is chosen from the same results.
- Trial drivers take no CPU (TRIAL_DRIVER_RESOURCES) and at most `workers` trials of a node run at
  once: sibling nodes' searches share the slots the driver gave them and never wait on CPUs held by
  trial drivers (1 CPU per trial driver + 1 per worker deadlocks 2 CPUs silently).
- The best COMPLETED trial wins (lowest metric for mode min, at the node's best validation step); its
  adapter, whatever its rank, goes to the children: `stack` concatenates mixed ranks exactly and
  `continue` re-projects the parent's delta to the child's rank.
- A trial ASHA stops is killed with its Ray Train run; each trial registers its actor as the run's
  owner on the run board, which releases the run's placement group once that actor is dead
  (`RunBoard.reap`: Ray's own clean-up needs the dashboard).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import zlib
from pathlib import Path

from hql_ray.orchestration import launch
from hql_ray.orchestration.job import NodeJob
from hql_ray.orchestration.search_state import NodeSearch, TrialState
from hql_ray.settings.errors import HQLError
from hql_ray.settings.records import NodeResult, Progress, TrialRecord
from hql_ray.settings.search_space import LevelSpec, Param, level_spec, trial_choice, trial_config

log = logging.getLogger(__name__)


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


def trials_dir(job: NodeJob) -> Path:
    """nodes/<id>/trials: each trial's adapter and result (`job.adapter_path` is nodes/<id>/adapter)."""
    return Path(job.adapter_path).parent / "trials"


class _Call:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return self._fn(*args)


class TrialBoard:
    """Stands in for the run board inside a trial's workers (same `.started/.progress.remote` calls):
    progress goes to the run board tagged with the trial; starts go to the node's search state."""

    def __init__(self, board, state: NodeSearch, trial_id: str):
        self._board, self._state, self._trial = board, state, trial_id

    @property
    def started(self):
        return _Call(lambda node_id, attempt: self._state.started(self._trial, attempt))

    @property
    def progress(self):
        def send(node_id, update: Progress):
            if self._board is not None:
                return self._board.progress.remote(node_id, dataclasses.replace(update, trial=self._trial))
            return None

        return _Call(send)

    @property
    def run_started(self):
        def send(run, node_id, _trial, pg):
            return None if self._board is None else self._board.run_started.remote(run, node_id, self._trial, pg)

        return _Call(send)

    @property
    def checkpoint_requested(self):
        return self._board.checkpoint_requested  # the run's stop reaches every trial

    @property
    def checkpointed(self):
        return _Call(lambda node_id, step: self._board.checkpointed.remote(f"{node_id} trial {self._trial}", step))


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
# (even 0.01 CPU each leaves 1.98 of 2 CPUs, and the second 1-CPU worker group never starts). Memory: what a
# trial holds besides its workers, on the trial actor's machine: the actor (~400 MB resident: Tune, Ray Train,
# torch) and its Ray Train controller (~380 MB). Asking for it keeps Ray from starting more trials than a
# machine holds (at 256 MB, 32 trials in flight on a 24 GB machine were OOM-killed).
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 1024**3}
_REGISTER_LOCK = threading.Lock()  # Tune's trainable registry is not thread-safe; siblings search at once


def trial_function(job: NodeJob, spec: LevelSpec, state: NodeSearch):
    """The trainable of a node's trials: one Ray Train run of the node with the trial's values."""
    import ray
    from ray import tune

    def trial(params: dict) -> None:
        trial_id = tune.get_context().get_trial_id()
        choice = trial_choice(params)
        run_name = f"{job.name}.trial_{trial_id}"  # stable: a restored trial continues its Train run
        kept = ray.get(state.kept_report(trial_id))
        if kept is not None:
            # It finished before the driver was lost, after Tune's last save of its state: Tune runs it again
            # on restore, but its result and adapter are kept: nothing to train, its last report again.
            tune.report(kept)
            return
        ray.get(state.began(trial_id, choice, run_name))
        trial_job = dataclasses.replace(job, cfg=trial_config(job.cfg, choice), workers=1, name=run_name,
                                        adapter_path=str(trials_dir(job) / trial_id / "adapter"),
                                        board=TrialBoard(job.board, state, trial_id))
        trainer = launch.make_trainer(trial_job, callbacks=[_report_callback(spec.metric)])
        result, error = None, None
        try:
            # This trial's actor owns the run: when ASHA stops the trial, the actor is killed and the
            # board releases the run's placement group (see RunBoard.reap).
            fit = launch.run_fit(trainer, trial_job, board=job.board, trial=trial_id,
                                 owner=ray.get_runtime_context().current_actor)
            if fit.error is not None:
                raise fit.error
            result = fit.return_value
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded; Tune retries only lost trial drivers
            error = f"{type(err).__name__}: {err}"[:2000]
        ray.get(state.finished(trial_id, result, error))
        # Tune fails the whole search (every sibling trial with it) on a trial that ends without ever having
        # reported the metric: one whose Train run failed before its first validation, or one so short (a
        # simulated trial) that it ended before Tune drained its reports. The trial's last result, reported
        # here, always carries it (NaN for a failed trial, recorded as an error by the search state).
        tune.report(ray.get(state.kept_report(trial_id)) or {spec.metric: float("nan"), "validation": 0})

    return trial


def make_tuner(cfg, job: NodeJob, spec: LevelSpec, trainable: str, scheduler):
    """A new search, or the search of an earlier launch of this run continued (`Tuner.restore`)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    experiment = f"{job.name}.tune"
    path = f"{job.storage.rstrip('/')}/{experiment}"
    if tune.Tuner.can_restore(path):
        log.warning("node %s: continuing its search from %s", job.node.id, path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space(cfg, spec))
    # At most `workers` trials at once (1 worker each): the slots the driver gave this node, no more.
    concurrent = spec.max_concurrent_trials or max(1, job.workers)
    seed = None if spec.seed is None else zlib.crc32(f"{spec.seed}:{job.node.id}".encode())  # siblings differ
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg, spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(
            name=experiment, storage_path=job.storage, verbose=0,
            # A trial driver lost with its machine is retried; its Train run resumes from its checkpoint.
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
        ),
    )


def search_node(cfg, job: NodeJob) -> NodeResult:
    """Run the node's trials with Ray Tune; the best trial's result (its adapter kept as the node's by the
    keeper), with every trial."""
    import ray

    # The legacy reporter is the one that verbose=0 silences: the driver draws its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    spec = level_spec(cfg, job.node.level)
    if spec is None:
        raise HQLError(f"level {job.node.level} is not searched")
    if job.searches is None:  # the driver starts it when a level of the run is searched
        raise HQLError(f"node {job.node.id}: a searched node's job needs the run's searches actor")
    # On the driver's machine: it writes the trials' results into the run folder.
    ray.get(job.searches.open.remote(job.node.id, spec.metric, spec.mode, str(trials_dir(job))))
    try:
        return _search(cfg, job, spec, NodeSearch(job.searches, job.node.id))
    finally:
        job.searches.close.remote(job.node.id)


def _search(cfg, job: NodeJob, spec: LevelSpec, state: NodeSearch) -> NodeResult:
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    trainable = f"hql_trial.{job.name}"
    with _REGISTER_LOCK:
        tune.register_trainable(trainable, tune.with_resources(trial_function(job, spec, state),
                                                               TRIAL_DRIVER_RESOURCES))
    if spec.scheduler == "asha":
        scheduler = _asha_cls()(time_attr="validation", grace_period=spec.grace_period,
                                reduction_factor=spec.reduction_factor, max_t=spec.max_t, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    grid = make_tuner(cfg, job, spec, trainable, scheduler).fit()
    trials_state, best_id = ray.get(state.summary())
    trials = trial_records(grid, trials_state, best_id, set(getattr(scheduler, "stopped", ())), spec)
    best = ray.get(state.result(best_id)) if best_id is not None else None
    if best is None:
        problems = "; ".join(f"{t.trial_id}: {t.status} {t.error or ''}".strip() for t in trials)
        raise HQLError(f"node {job.node.id}: no trial of the search finished ({problems})")
    chosen = next(t for t in trials if t.trial_id == best_id)
    best.metrics.trial = dataclasses.replace(chosen.config, trial_id=best_id)
    if job.keeper is not None:  # the best trial's adapter becomes the node's: moved on the head, no bytes here
        ray.get(job.keeper.adopt.remote(job.name, chosen.run, str(trials_dir(job) / best_id / "adapter"),
                                        job.adapter_path))
    return dataclasses.replace(best, trials=trials)


def trial_records(grid, trials: dict[str, TrialState], best_id: str | None, stopped: set[str],
                  spec: LevelSpec) -> list[TrialRecord]:
    """One record per trial for the manifest: id, values, metric, status, times, restarts."""
    records = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or next((t for t in trials if t in str(result.path or "")), "unknown")
        entry = trials.get(trial_id, TrialState())
        choice = entry.choice or trial_choice(dict(result.config or {}))
        error = entry.error or (None if result.error is None else str(result.error)[:2000])
        if entry.completed:
            status, value = "done", entry.value
        elif trial_id in stopped:
            # ASHA ended it early (its Train run then dies with the trial: that error is not one).
            status, value, error = "stopped", metrics.get(spec.metric), None
        else:
            status, value = "error", metrics.get(spec.metric)
        finished = entry.finished_at or metrics.get("timestamp")
        records.append(TrialRecord(
            trial_id, choice, spec.metric,
            None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            status, trial_id == best_id, metrics.get("validation"), entry.starts, entry.run, entry.started_at,
            finished, None if not (finished and entry.started_at) else round(finished - entry.started_at, 2), error))
    records.sort(key=lambda t: t.trial_id)
    return records
