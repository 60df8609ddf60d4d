"""Resumable batch inference on Ray Data: work split in shards, each written once, atomically.

`hql-ray translate` and `hql-ray parse` both turn a list of sentences into model outputs. The work is
cut into shards (one language, one split, up to ``shard_size`` sentences); a shard's outputs are
collected by the driver and written to ``<work>/shards/<lang>/<split>-NNNNN.jsonl`` in one atomic
rename once every row of it is back. A killed run leaves only complete shards (and stray temp files,
removed at the next start), so re-running the same command redoes only the missing shards.

``<work>/run.json`` records what the shards depend on (model, generation settings, a hash of the
inputs). A different run's folder is refused instead of being silently mixed with this one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.settings.errors import InputError
from hql_ray.outputs.manifest import atomic_write_json, atomic_write_text


KILL_AFTER = "HQL_RAY_TEST_KILL_AFTER_SHARDS"  # test hook: SIGKILL the driver after N shards are written


@dataclass
class Shard:
    name: str  # "<lang>/<split>-00003": also the file name under shards/
    lang: str  # the language this shard's outputs are for (the actor picks the forced token by it)
    rows: list[tuple[int, str, int]]  # (index in the split, input text, input length in tokens)


def plan_shards(lang: str, split: str, texts: list[str], lengths: list[int], shard_size: int) -> list[Shard]:
    """Consecutive chunks of one split; the same inputs and size always give the same shards."""
    return [Shard(f"{lang}/{split}-{k // shard_size:05d}", lang,
                  [(i, texts[i], lengths[i]) for i in range(k, min(k + shard_size, len(texts)))])
            for k in range(0, len(texts), shard_size)]


def text_hash(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class WorkDir:
    """The shards of one run and the record of what they were made with."""

    def __init__(self, root: Path, fingerprint: dict, langs: dict[str, str] | None = None):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.langs = dict(langs or {})  # per-language settings (target token): languages may be added later

    def open(self, restart: bool = False) -> None:
        """Create, or check that the folder's shards were made by the same settings (else InputError)."""
        record = self.root / "run.json"
        if restart and self.root.exists():
            for path in sorted(self.root.glob("shards/**/*.jsonl")):
                path.unlink()
            record.unlink(missing_ok=True)
        if record.is_file():
            old = json.loads(record.read_text(encoding="utf-8"))
            diffs = [f"{k}: {old.get('fingerprint', {}).get(k)!r} there, {v!r} now"
                     for k, v in self.fingerprint.items() if old.get("fingerprint", {}).get(k) != v]
            diffs += [f"{code}: token {old['langs'][code]!r} there, {tok!r} now"
                      for code, tok in self.langs.items() if code in old.get("langs", {}) and old["langs"][code] != tok]
            if diffs:
                raise InputError("the output folder holds the shards of a different run (" + "; ".join(diffs)
                                 + "): use another -o, or --restart to discard them", path=record)
            self.langs = {**old.get("langs", {}), **self.langs}
        for stray in self.root.glob("shards/**/.*.jsonl.*"):  # temp files of a killed run: never a shard
            stray.unlink()
        atomic_write_json(record, {"fingerprint": self.fingerprint, "langs": self.langs})

    def path(self, name: str) -> Path:
        return self.root / "shards" / f"{name}.jsonl"

    def read(self, shard: Shard) -> list[dict] | None:
        """The shard's rows if it is complete (one row per input, the same indices), else None."""
        path = self.path(shard.name)
        if not path.is_file():
            return None
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        except ValueError:
            return None
        if sorted(r.get("idx") for r in rows) != [i for i, _, _ in shard.rows]:
            return None
        return rows

    def write(self, shard: Shard, rows: list[dict]) -> None:
        rows = sorted(rows, key=lambda r: r["idx"])
        atomic_write_text(self.path(shard.name), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---- Ray ----------------------------------------------------------------------------------------
def init_ray(address: str | None) -> None:
    """Join a cluster (`--address auto` or host:port) or start a local Ray, unless one is running."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


@dataclass
class Pool:
    """Actor pool layout: `size` actors, each with `num_gpus` GPUs and `num_cpus` CPUs."""

    size: int
    num_gpus: float
    num_cpus: float
    threads: int

    def describe(self) -> str:
        kind = "GPU" if self.num_gpus else "CPU"
        return f"{self.size} {kind} actor(s), {self.num_cpus:g} CPU and {self.num_gpus:g} GPU each"


def actor_pool(actors: int | None, cpu_only: bool) -> Pool:
    """One actor per GPU of the cluster; without GPUs (or with --cpu) CPU actors sharing the CPUs."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if gpus >= 1 and not cpu_only:
        size = actors or gpus
        if size > gpus:
            raise InputError(f"--actors {size} but the Ray cluster has {gpus} GPU(s) (or add --cpu)")
        return Pool(size, 1, min(1.0, cpus / size), 1)
    size = actors or 1
    per = cpus / size
    return Pool(size, 0, per, max(1, int(per)))


@dataclass
class Outcome:
    written: int = 0  # shards computed by this run
    reused: int = 0  # shards found complete from an earlier run
    sentences: int = 0  # inputs generated for by this run
    tokens: int = 0  # tokens generated by this run
    seconds: float = 0.0  # wall time of the Ray Data pipeline
    rows: dict[str, list[dict]] = field(default_factory=dict)  # shard name -> rows, every shard


def run_shards(work: WorkDir, shards: list[Shard], spec: dict, pool: Pool, *, batch_size: int,
               on_shard: Callable[[Shard, int], None] | None = None) -> Outcome:
    """Generate for every shard not already on disk, with Ray Data and a pool of model actors."""
    import ray

    out = Outcome()
    todo = []
    for shard in shards:
        rows = work.read(shard)
        if rows is None:
            todo.append(shard)
        else:
            out.rows[shard.name], out.reused = rows, out.reused + 1
    if not todo:
        return out
    # Longest first inside each shard: batches hold similar lengths (little padding) and shards still
    # finish one after another, so an interrupted run keeps most of its work.
    items = [{"shard": s.name, "idx": i, "text": t, "lang": s.lang}
             for s in todo for i, t, _ in sorted(s.rows, key=lambda r: -r[2])]
    by_name = {s.name: s for s in todo}
    spec = {**spec, "threads": pool.threads}
    start = time.perf_counter()
    # One block per batch: a batch is a run of consecutive (length-sorted) rows.
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
    ds = ds.map_batches(
        _predictor(), fn_constructor_args=(spec,), batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.size), num_gpus=pool.num_gpus, num_cpus=pool.num_cpus,
    )
    pending: dict[str, list[dict]] = {s.name: [] for s in todo}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, idx, text, n, cut in zip(batch["shard"], batch["idx"], batch["output"], batch["n_tokens"],
                                           batch["truncated"]):
            rows = pending[str(name)]
            rows.append({"idx": int(idx), "output": str(text), "n_tokens": int(n), "truncated": bool(cut)})
            shard = by_name[str(name)]
            if len(rows) == len(shard.rows):
                work.write(shard, rows)
                out.rows[shard.name] = sorted(rows, key=lambda r: r["idx"])
                out.written += 1
                out.sentences += len(rows)
                out.tokens += sum(r["n_tokens"] for r in rows)
                if on_shard is not None:
                    on_shard(shard, len(rows))
                if out.written == int(os.environ.get(KILL_AFTER, 0) or -1):
                    os.kill(os.getpid(), signal.SIGKILL)  # tests: a run killed between two shards
    out.seconds = time.perf_counter() - start
    missing = [name for name, rows in pending.items() if name not in out.rows]
    if missing:  # Ray Data dropped rows: never pretend the run is complete
        raise RuntimeError(f"{len(missing)} shard(s) came back incomplete, e.g. {missing[0]}; re-run to redo them")
    return out


def _predictor():
    from hql_ray.prep.seq2seq_actor import Seq2SeqPredictor

    return Seq2SeqPredictor
