"""The `tune:` config section: which levels are searched, over what, ranked how. Parsed once by the config.

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

Each trial runs the node with model.lora.r / model.lora.alpha / train.learning_rate overridden
(`trial_config`). How the trials run is `hql_ray.orchestration.tune`'s business.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from hql_ray.settings.errors import ConfigError
from hql_ray.settings.records import TrialChoice

METRICS = ("val_loss",)  # what the node reports at every validation
SPEC_KEYS = {"num_samples", "lora_r", "lora_alpha", "learning_rate", "metric", "mode", "scheduler",
             "max_concurrent_trials", "seed"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t"}


@dataclass
class Param:
    """One searched value: kind is fixed | choice | grid | loguniform."""

    kind: str
    values: list = field(default_factory=list)


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
    if levels is not None:
        check_levels(section, levels)
    out: dict[str, LevelSpec | None] = {}
    for level, raw in (section or {}).items():
        where = f"tune.{level}"
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
    """The search of `level` (None: not searched), from the config's once-parsed section."""
    specs = cfg.search_specs
    if level in specs:
        return specs[level]
    return specs.get("default")


def searches_level(cfg, level: str) -> bool:
    return level_spec(cfg, level) is not None


def check_levels(section: dict | None, levels: list[str]) -> None:
    """Every level the section names must be a level of the run's tree (known once the tree is read)."""
    for level in section or {}:
        if level != "default" and level not in levels:
            raise ConfigError(f"tune.{level}: no level {level!r} in this run; its levels are {', '.join(levels)} "
                              "(or use tune.default)")


def alpha_for(r: int, alpha) -> int:
    """The one alpha rule: "r" (or None) = the trial's rank, as the original; else the number given."""
    return r if alpha in (None, "r") else int(alpha)


def trial_choice(params: dict) -> TrialChoice:
    """A trial's values as Tune hands them (lora_r, lora_alpha "r" or a number, learning_rate)."""
    r = int(params["lora_r"])
    return TrialChoice(r, alpha_for(r, params.get("lora_alpha", "r")), float(params["learning_rate"]))


def trial_config(cfg, choice: TrialChoice):
    """The run config with one trial's values in model.lora.r / model.lora.alpha / train.learning_rate."""
    lora = dataclasses.replace(cfg.model.lora, r=choice.lora_r, alpha=choice.lora_alpha)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=lora),
                               train=dataclasses.replace(cfg.train, learning_rate=choice.learning_rate))


def better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a < b if mode == "min" else a > b
