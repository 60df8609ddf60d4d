"""What a run folder keeps of how it was started: `config.yaml` (the resolved config, what `hql-ray train
--print-config` prints and `--config` reads back) and `train.log` (the driver's log records and the plain
progress lines, whatever the terminal showed).

The driver writes `config.yaml` and opens `train.log` once the run folder passed its checks
(`orchestration.run_start`), so a refused run leaves nothing behind. `RunLog` (held by `hql-ray train` around
the run) sends the log records and progress lines there; what comes before the folder is opened (the data
check's warnings) is kept in memory and written first.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import yaml

from hql_ray.outputs.manifest import atomic_write_text

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
CONFIG_HEADER = ("# the resolved config of `hql-ray train` (defaults < --config < flags < overrides); "
                 "--config reads it\n")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def config_yaml(cfg) -> str:
    """The resolved config as YAML that `--config` reads back to the same config."""
    return CONFIG_HEADER + yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def open_run_files(cfg, run_dir: Path) -> None:
    """config.yaml (this start's config: a --resume with other flags rewrites it) and train.log's line for this
    start (appended: the log of every start of the run)."""
    from hql_ray import __version__

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, config_yaml(cfg))
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} hql-ray {__version__}: run {cfg.run_name} "
                  f"{'resumed' if cfg.run.resume else 'started'} (config: {CONFIG_FILE}) ====\n")


class _LogHandler(logging.Handler):
    def __init__(self, run_log: "RunLog", level: int):
        super().__init__(level)
        self.run_log = run_log
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_log.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - the log file must never stop a run
            self.handleError(record)


class RunLog:
    """train.log of `run_dir` as a text stream (`write`: a PlainReporter's lines) and a logging handler on the
    root logger (from `__enter__` to `__exit__`). Nothing is written before the driver created the file."""

    def __init__(self, run_dir: str | Path, level: int = logging.NOTSET):
        self.path = Path(run_dir) / LOG_FILE
        self.handler = _LogHandler(self, level)
        self._pending: list[str] = []
        self._lock = threading.Lock()
        # The driver's line for this start grows the file (a resumed run's log holds the earlier starts).
        self._size_before = self._size()
        self._opened = False

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return -1

    def write(self, text: str) -> int:
        with self._lock:
            self._pending.append(text)
            self._opened = self._opened or self._size() > self._size_before
            if self._opened:  # from this start's line on (open_run_files), appended
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write("".join(self._pending))
                self._pending.clear()
        return len(text)

    def flush(self) -> None:
        pass

    def __enter__(self) -> "RunLog":
        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> bool:
        logging.getLogger().removeHandler(self.handler)
        self.write("")  # whatever is still pending, if the file exists
        return False
