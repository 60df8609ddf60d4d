"""What a served application is made of (`ServeSettings`): the run, its languages, batching, replicas and the
limits on requests. It crosses into Ray Serve as a plain dict: the deployments' init arguments, and the
`args:` of a Serve config file (`serve run` passes `key=value` strings, hence the conversions)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hql_ray.settings.errors import ConfigError

APP_NAME = "hql-ray"
IMPORT_PATH = "hql_ray.serving.app:build_app"  # the application builder a Serve config file names


@dataclass
class RequestLimits:
    """What one request may ask for; beyond it the request is refused with a 4xx (and the server goes on)."""

    max_items: int = 64  # items in one POST /generate
    max_input_chars: int = 10_000  # characters of one input (an AMR graph or a sentence)
    max_new_tokens: int = 512  # the largest max_new_tokens a request may set
    max_beams: int = 8  # the largest num_beams a request may set

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: every item at its largest, with room for the JSON around it."""
        return self.max_items * (4 * self.max_input_chars + 512) + 1024


@dataclass
class ServeSettings:
    """One served run. `languages`: FLORES codes, in the order served (empty: every exported language)."""

    run_dir: str
    languages: list[str] = field(default_factory=list)
    replicas: int = 1
    max_batch: int = 16  # items in one generate call (one mixed-language batch)
    batch_wait_ms: float = 10.0  # how long a replica waits to fill a batch
    max_adapters: int = 0  # per replica; 0 = every language attached (mixed batches), else multiplexed
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    device: str | None = None  # cpu, cuda, cuda:1 (default: cuda if the replica sees one)
    limits: RequestLimits = field(default_factory=RequestLimits)

    def multiplexed(self, n_languages: int) -> bool:
        """Replicas hold a bounded set of adapters and requests are routed by language."""
        return 0 < self.max_adapters < n_languages

    def check(self) -> "ServeSettings":
        positive = {"replicas": self.replicas, "max_batch": self.max_batch, "max_items": self.limits.max_items,
                    "max_input_chars": self.limits.max_input_chars, "max_new_tokens": self.limits.max_new_tokens,
                    "max_beams": self.limits.max_beams}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name, value in {"batch_wait_ms": self.batch_wait_ms, "max_adapters": self.max_adapters,
                            "cpus_per_replica": self.cpus_per_replica,
                            "gpus_per_replica": self.gpus_per_replica}.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ServeSettings":
        """From `to_dict`'s output, a config file's `args:` or `serve run`'s `key=value` strings."""
        data = dict(data)
        if "run_dir" not in data:
            raise ConfigError("the application's args need run_dir (the finished run to serve)")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown serve setting(s): {', '.join(sorted(unknown))}")
        limits = data.pop("limits", None) or {}
        if not isinstance(limits, dict):
            raise ConfigError(f"limits must be a mapping, got {limits!r}")
        return cls(**_converted(cls, data), limits=RequestLimits(**_converted(RequestLimits, limits))).check()


def _converted(kind, data: dict) -> dict:
    """Values as the dataclass's fields type them (a config's `args` may hold strings)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    out = {}
    for name, value in data.items():
        if name not in types:
            raise ConfigError(f"unknown serve setting: {name}")
        wanted = types[name]
        if "None" in wanted and value in (None, "None", "null", ""):
            out[name] = None
            continue
        try:
            if wanted.startswith("list") and isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            elif wanted == "int":
                value = int(value)
            elif wanted == "float":
                value = float(value)
            elif wanted.startswith("str") and value is not None:
                value = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"serve setting {name}: expected {wanted}, got {value!r}") from None
        out[name] = value
    return out
