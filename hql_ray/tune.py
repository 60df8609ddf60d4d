"""Per-level hyper-parameter search with Ray Tune: LoRA rank and learning rate, trials ranked on val_loss.

The `tune:` config section
--------------------------
Keys are level names (columns of the tree file) or `default` (every level not named)::

    tune:
      default:                          # omit it to search only the levels named below
        num_samples: 2                  # trials per node (per grid point when a grid is given)
        lora_r: [4, 8]                  # a list = choices; {grid: [4, 8]} = each value; an int = fixed
        lora_alpha: r                   # "r" = the trial's rank (the original's alpha = r), an int, or choices
        learning_rate: [1.0e-4, 1.0e-2] # [low, high] = log-uniform; {choice: [...]}, {grid: [...]} or a number
        metric: val_loss                # what trials report at every validation (the only one, for now)
        mode: min
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}
        max_concurrent_trials: null     # null = the node's allocated workers (each trial is 1 worker)
        seed: 0                         # sampling seed, mixed with the node id (null = random)
      level2: {num_samples: 4}          # a level's own settings, merged over default
      language: false                   # false (or null): this level is not searched

Each trial runs the node with model.lora.r / model.lora.alpha / train.learning_rate overridden. The
node's manifest entry then holds the best trial's adapter, metrics (with `trial`: its id and values)
and history, and `trials`: one record per trial, {trial_id, config: {lora_r, lora_alpha,
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
- Trial drivers take 0.01 CPU and at most `workers` trials of a node run at once: sibling nodes'
  searches share the GPUs the driver gave them and never wait on CPUs held by trial drivers
  (1 CPU per trial driver + 1 per worker deadlocks 2 CPUs silently).
- The best COMPLETED trial wins (lowest metric for mode min, at the node's best validation step); its
  adapter, whatever its rank, goes to the children: `stack` concatenates mixed ranks exactly and
  `continue` re-projects the parent's delta to the child's rank.
- A search cut short by a dead driver is simply redone on `--resume` (new launch name, new trial ids).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
import zlib
from dataclasses import dataclass, field

from hql_ray.errors import ConfigError, HQLError

METRICS = ("val_loss",)  # what the node reports at every validation
SPEC_KEYS = {"num_samples", "lora_r", "lora_alpha", "learning_rate", "metric", "mode", "scheduler",
             "max_concurrent_trials", "seed"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}


@dataclass
class Param:
    """One searched value: kind is fixed | choice | grid | loguniform."""

    kind: str
    values: list = field(default_factory=list)

    def to_tune(self):
        from ray import tune

        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return tune.choice(self.values)
        if self.kind == "grid":
            return tune.grid_search(self.values)
        return tune.loguniform(self.values[0], self.values[1])


@dataclass
class LevelSpec:
    num_samples: int = 2
    lora_r: Param | None = None  # None = the config's model.lora.r
    lora_alpha: Param | str = "r"  # "r" = alpha follows each trial's rank
    learning_rate: Param | None = None  # None = the config's train.learning_rate
    metric: str = "val_loss"
    mode: str = "min"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 1_000_000  # in validations; trials that survive every rung still run to the end
    max_concurrent_trials: int | None = None
    seed: int | None = 0


# ---- the config section -------------------------------------------------------------------------
def _number(key: str, value, kind=float):
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(number)
    return number


def _param(key: str, value, kind=float, list_means: str = "choice") -> Param:
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("choice", "grid", "loguniform"):
            raise ConfigError(f"{key} must be a number, a list, or one of {{choice: [...]}}, {{grid: [...]}}, "
                              f"{{loguniform: [low, high]}}; got {value!r}")
        (how, items), = value.items()
        return _param(key, items, kind, how)
    if isinstance(value, (list, tuple)):
        values = [_number(key, v, kind) for v in value]
        if not values:
            raise ConfigError(f"{key} must not be an empty list")
        if list_means == "loguniform":
            if len(values) != 2 or not 0 < values[0] < values[1]:
                raise ConfigError(f"{key}: a log-uniform range is [low, high] with 0 < low < high, got {value!r}")
        elif any(v <= 0 for v in values):
            raise ConfigError(f"{key} values must be > 0, got {value!r}")
        return Param(list_means, values)
    number = _number(key, value, kind)
    if number <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")
    return Param("fixed", [number])


def parse_level(raw: dict, where: str) -> LevelSpec:
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'; valid keys: {', '.join(sorted(SPEC_KEYS))}")
    spec = LevelSpec()
    if "num_samples" in raw:
        spec.num_samples = _number(f"{where}.num_samples", raw["num_samples"], int)
        if spec.num_samples < 1:
            raise ConfigError(f"{where}.num_samples must be >= 1, got {raw['num_samples']!r}")
    if raw.get("lora_r") is not None:
        spec.lora_r = _param(f"{where}.lora_r", raw["lora_r"], int)
    alpha = raw.get("lora_alpha", "r")
    spec.lora_alpha = "r" if alpha in (None, "r") else _param(f"{where}.lora_alpha", alpha, int)
    if raw.get("learning_rate") is not None:
        spec.learning_rate = _param(f"{where}.learning_rate", raw["learning_rate"], float, "loguniform")
    spec.metric = raw.get("metric") or spec.metric
    if spec.metric not in METRICS:
        raise ConfigError(f"{where}.metric must be one of {', '.join(METRICS)}, got {spec.metric!r}")
    spec.mode = raw.get("mode") or spec.mode
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"{where}.mode must be min or max, got {spec.mode!r}")
    sched = raw.get("scheduler") or {}
    if isinstance(sched, str):
        sched = {"type": sched}
    if not isinstance(sched, dict):
        raise ConfigError(f"{where}.scheduler must be a mapping, got {sched!r}")
    unknown = sorted(set(sched) - SCHEDULER_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{where}.scheduler.{unknown[0]}'; valid keys: {', '.join(sorted(SCHEDULER_KEYS))}")
    spec.scheduler = sched.get("type", "asha")
    if spec.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"{where}.scheduler.type must be asha or fifo, got {spec.scheduler!r}")
    if "grace_period" in sched:
        spec.grace_period = _number(f"{where}.scheduler.grace_period", sched["grace_period"], int)
    if "reduction_factor" in sched:
        spec.reduction_factor = _number(f"{where}.scheduler.reduction_factor", sched["reduction_factor"])
    if sched.get("max_t") is not None:
        spec.max_t = _number(f"{where}.scheduler.max_t", sched["max_t"], int)
    if spec.grace_period < 1 or spec.reduction_factor <= 1 or spec.max_t < spec.grace_period:
        raise ConfigError(f"{where}.scheduler needs grace_period >= 1, reduction_factor > 1, max_t >= grace_period")
    if raw.get("max_concurrent_trials") is not None:
        spec.max_concurrent_trials = _number(f"{where}.max_concurrent_trials", raw["max_concurrent_trials"], int)
        if spec.max_concurrent_trials < 1:
            raise ConfigError(f"{where}.max_concurrent_trials must be >= 1")
    if "seed" in raw:
        spec.seed = None if raw["seed"] is None else _number(f"{where}.seed", raw["seed"], int)
    return spec


def parse_tune(section: dict | None, levels: list[str] | None = None) -> dict[str, LevelSpec | None]:
    """{level or "default": LevelSpec, or None where searching is switched off}. Checks every key."""
    out: dict[str, LevelSpec | None] = {}
    for level, raw in (section or {}).items():
        where = f"tune.{level}"
        if levels is not None and level != "default" and level not in levels:
            raise ConfigError(f"{where}: no level {level!r} in this run; its levels are {', '.join(levels)} "
                              "(or use tune.default)")
        if raw is None or raw is False:
            out[level] = None
            continue
        if raw is True:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping of search settings, or false; got {raw!r}")
        base = section.get("default") if level != "default" and isinstance(section.get("default"), dict) else {}
        merged = {**base, **raw}
        if isinstance(base.get("scheduler"), dict) and isinstance(raw.get("scheduler"), dict):
            merged["scheduler"] = {**base["scheduler"], **raw["scheduler"]}
        out[level] = parse_level(merged, where)
    return out


def level_spec(cfg, level: str) -> LevelSpec | None:
    specs = parse_tune(cfg.tune)
    if level in specs:
        return specs[level]
    return specs.get("default")


def searches_level(cfg, level: str) -> bool:
    return level_spec(cfg, level) is not None


def param_space(cfg, spec: LevelSpec) -> dict:
    """What a trial receives: lora_r, lora_alpha ("r" = follow r), learning_rate."""
    r = spec.lora_r or Param("fixed", [cfg.model.lora.r])
    lr = spec.learning_rate or Param("fixed", [cfg.train.learning_rate])
    alpha = spec.lora_alpha.to_tune() if isinstance(spec.lora_alpha, Param) else "r"
    return {"lora_r": r.to_tune(), "lora_alpha": alpha, "learning_rate": lr.to_tune()}


def trial_config(cfg_dict: dict, params: dict) -> dict:
    """The run config with one trial's values in model.lora.r / model.lora.alpha / train.learning_rate."""
    out = copy.deepcopy(cfg_dict)
    r = int(params["lora_r"])
    out["model"]["lora"]["r"] = r
    out["model"]["lora"]["alpha"] = r if params.get("lora_alpha", "r") == "r" else int(params["lora_alpha"])
    out["train"]["learning_rate"] = float(params["learning_rate"])
    return out


def better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a < b if mode == "min" else a > b


# ---- Ray side -----------------------------------------------------------------------------------
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

        def finished(self, trial_id: str, result: dict | None, error: str | None) -> None:
            entry = self.trials.setdefault(trial_id, {"starts": 0})
            entry["finished_at"] = time.time()
            if error is not None or result is None:
                entry["error"] = error or "training returned nothing"
                return
            value = (result.get("metrics") or {}).get(self.metric)
            entry["value"] = value
            entry["completed"] = True
            if value is not None and better(float(value), None if self.best is None else self._best_value(), self.mode):
                self.best_id, self.best = trial_id, copy.deepcopy(result)  # own copy: the sender may exit

        def _best_value(self):
            return (self.best.get("metrics") or {}).get(self.metric)

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
        def send(run, pg):
            return None if self._board is None else self._board.run_started.remote(run, pg)

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


_REGISTER_LOCK = threading.Lock()  # Tune's trainable registry is not thread-safe; siblings search at once


def search_node(cfg, payload, workers, refs, name, slots, storage, board) -> dict:
    """Run the node's trials with Ray Tune; return the best trial's node result plus every trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hql_ray import launch

    # The legacy reporter is the one that verbose=0 silences: the driver draws its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    spec = level_spec(cfg, payload["level"])
    if spec is None:
        raise HQLError(f"level {payload['level']} is not searched")
    cfg_dict = cfg.to_dict()
    max_failures = cfg.resources.max_failures
    node_id = payload["id"]
    here = ray.get_runtime_context().get_node_id()
    state = _search_state_cls().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)  # lives with the driver
    ).remote(board, node_id, spec.metric, spec.mode)

    def trial(params: dict) -> None:
        trial_id = tune.get_context().get_trial_id()
        run_name = f"{name}.trial_{trial_id}"  # unique under the storage path: a reused name would resume
        ray.get(state.began.remote(trial_id, dict(params), run_name))
        trainer = launch.make_trainer(
            trial_config(cfg_dict, params), payload, 1, refs, run_name, slots, storage,
            TrialBoard(board, state, trial_id), max_failures=max_failures, callbacks=[_report_callback(spec.metric)])
        wants = {"workers": 1, "per_worker": launch.per_worker_resources(slots)}
        result, error = None, None
        try:
            # This trial's actor owns the run: when ASHA stops the trial, the actor is killed and the
            # board releases the run's placement group (see RunBoard.reap).
            fit = launch.run_fit(trainer, board, run_name, node_id, wants, trial=trial_id,
                                 owner=ray.get_runtime_context().current_actor)
            if fit.error is not None:
                raise fit.error
            result = fit.return_value
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded; Tune retries only lost trial drivers
            error = f"{type(err).__name__}: {err}"[:2000]
        ray.get(state.finished.remote(trial_id, result, error))

    trainable_name = f"hql_trial.{name}"
    with _REGISTER_LOCK:
        tune.register_trainable(trainable_name, tune.with_resources(trial, {"cpu": 0.01}))
    if spec.scheduler == "asha":
        scheduler = _asha_cls()(time_attr="validation", grace_period=spec.grace_period,
                                reduction_factor=spec.reduction_factor, max_t=spec.max_t, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    # At most `workers` trials at once (1 worker each): the slots the driver gave this node, no more.
    concurrent = spec.max_concurrent_trials or max(1, workers)
    seed = None if spec.seed is None else zlib.crc32(f"{spec.seed}:{node_id}".encode())  # siblings differ
    tuner = tune.Tuner(
        trainable_name,
        param_space=param_space(cfg, spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(
            name=f"{name}.tune", storage_path=storage, verbose=0,
            # A trial driver lost with its machine is retried; its Train run resumes from its checkpoint.
            failure_config=tune.FailureConfig(max_failures=max_failures),
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
    out = dict(best)
    chosen = next(t for t in trials if t["trial_id"] == summary["best_id"])
    out["metrics"] = {**(best.get("metrics") or {}), "trial": {"trial_id": chosen["trial_id"], **chosen["config"]}}
    out["trials"] = trials
    return out


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
        config = {"lora_r": r, "lora_alpha": r if params.get("lora_alpha", "r") == "r" else int(params["lora_alpha"]),
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
