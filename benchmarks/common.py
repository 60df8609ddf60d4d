"""Helpers shared by the Ray benchmarks: a local Ray, temp run folders, manifest timings, tables.

Each benchmark measures a thing and its baseline in ONE process, one after the other on the same
Ray, and prints their ratio; nothing here asserts on time.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PTHQL = ROOT / "language_files" / "12langs_pthql.csv"
LEVELS = ["level0", "level1", "level2", "language"]


def quiet() -> None:
    """Benchmarks print a table; Ray's and transformers' chatter goes away."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)


def start_ray(num_cpus: int, num_gpus: int = 0) -> None:
    """A fresh local Ray owned by this process (never joins another helper's cluster)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)


@contextmanager
def temp_dir(prefix: str, keep: bool = False):
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def makespan(manifest) -> float:
    """First node start to last node finish, from the run's manifest (driver wall clock)."""
    nodes = manifest.nodes.values()
    return max(v.finished_at for v in nodes) - min(v.started_at for v in nodes)


def node_spans(manifest) -> dict[str, float]:
    return {n: v.finished_at - v.started_at for n, v in manifest.nodes.items()}


def all_done(manifest) -> None:
    bad = {n: v.status for n, v in manifest.nodes.items() if v.status != "done"}
    if bad:
        errors = {n: (manifest.nodes[n].error or "")[:300] for n in bad}
        raise SystemExit(f"benchmark run did not finish: {bad}\n{errors}")


def print_table(header: list[str], rows: list[list[str]], left: int = 1) -> None:
    """Aligned plain-text table: the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def machine() -> str:
    """One line naming the host the numbers came from (cores, load at start)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPU cores, load average {load:.1f} at start"


# ---- demo-tree runs (speedup.py, overhead.py) ---------------------------------------------------
DEMO = ROOT / "configs" / "demo.yaml"
# Quick mode: 3 levels (9 nodes), a few steps per node, generation at the leaves only.
QUICK_OVERRIDES = [
    "tree.levels=[level0, level1, level2]",
    "train.max_steps=20",
    "data.max_validation_per_language=10",
    "eval.at_nodes=leaves",
    "eval.max_new_tokens=16",
]


def demo_config(config_file: str | Path, overrides: list[str]):
    """The demo config (paths relative to the repo root) with overrides, absolute paths for Ray."""
    from hql_ray.settings.config import make_config

    os.chdir(ROOT)  # demo.yaml's paths are relative to the checkout
    return make_config(config_file, None, overrides).with_absolute_paths()


def warm_caches(cfg) -> float:
    """Build the tiny model and every language's tokenized splits once, before anything is timed.

    Both sides of a comparison then read the same caches; neither pays for tokenizing.
    """
    from hql_ray.data import dataset as ds_lib
    from hql_ray.training import modeling
    from hql_ray.settings.tree import load_tree

    import transformers

    transformers.logging.disable_progress_bar()  # "Loading weights" bars of the bare loop
    watch = Stopwatch()
    cache = cfg.cache_dir
    if cfg.model.base == "tiny":
        modeling.base_model_path(cfg)
    settings = ds_lib.DataSettings.from_config(cfg)
    tokenizer = modeling.load_tokenizer(cfg.model.base)
    for lang in load_tree(cfg.tree.file, cfg.tree.levels).languages:
        for split in ("train", "validation", "test"):
            ds_lib.language_dataset(settings, lang.code, lang.name, split, tokenizer, cache)
    return watch()


def settings_line(cfg) -> str:
    """The settings that decide the work, for the printout and the README."""
    return (f"tree {Path(cfg.tree.file).name} levels {' '.join(cfg.tree.levels or [])}; model {cfg.model.base} "
            f"{cfg.model.mode} r={cfg.model.lora.r} handoff {cfg.model.handoff}; data {Path(cfg.data.dir).name} "
            f"(train cap {cfg.data.max_train_per_corpus} per corpus, validation {cfg.data.validation}); "
            f"epochs {cfg.train.epochs:g}, batch {cfg.train.batch_size}, max_steps {cfg.train.max_steps}; "
            f"generate {cfg.eval.generate} at {cfg.eval.at_nodes} nodes, max_new_tokens {cfg.eval.max_new_tokens}")



class CpuMeter:
    """CPU seconds used by this process and everything it starts (the local Ray), sampled per process.

    Ray's raylet does not collect its exited workers' times, so a difference of two readings would
    miss every process that came and went. Instead a thread samples every process of the tree each
    `interval` seconds and keeps each one's last reading: only a process's last fraction of an
    interval goes uncounted. Processes already alive at start count from their start reading.
    """

    def __init__(self, interval: float = 0.5):
        import threading

        self.interval = interval
        self._seen: dict[tuple[int, float], list[float]] = {}  # (pid, create_time) -> [first, last]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.own_seconds = 0.0  # the sampling thread's own CPU (in this process: not the measured work's)

    def _sample(self, first: bool) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                key = (proc.pid, proc.create_time())
                t = proc.cpu_times()
                used = t.user + t.system
            except psutil.Error:
                continue
            if key in self._seen:
                self._seen[key][1] = used
            else:
                self._seen[key] = [used if first else 0.0, used]

    def _run(self) -> None:
        import time

        while not self._stop.wait(self.interval):
            self._sample(first=False)
        self.own_seconds = time.thread_time()

    def __enter__(self) -> "CpuMeter":
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)

    @property
    def seconds(self) -> float:
        """CPU of the process tree over the measurement, less the sampling thread's own."""
        return sum(last - first for first, last in self._seen.values()) - self.own_seconds
