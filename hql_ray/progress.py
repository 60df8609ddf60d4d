"""Progress of a run in the terminal: one line per event (the live tree view builds on these events)."""

from __future__ import annotations

import sys
import time


class PlainReporter:
    """Prints node starts and ends with the elapsed time; works in logs and CI."""

    def __init__(self, cfg, stream=None):
        self.cfg = cfg
        self.stream = stream or sys.stdout
        self.t0 = time.time()
        self.done = 0
        self.total = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _print(self, text: str) -> None:
        elapsed = time.time() - self.t0
        print(f"[{elapsed:7.1f}s] {text}", file=self.stream, flush=True)

    def event(self, kind: str, info: dict) -> None:
        if kind == "run_started":
            self.total = info["nodes"]
            what = "GPU" if info["gpu"] else "CPU"
            self._print(f"run {info['run_dir']}: {info['nodes']} nodes on {info['slots']} {what} slot(s)")
        elif kind == "skipped":
            self.done += 1
            self._print(f"{info['node']}: already done (resume), skipped")
        elif kind == "node_started":
            self._print(f"{info['node']}: started on {info['workers']} worker(s)")
        elif kind == "node_done":
            self.done += 1
            m = info.get("metrics") or {}
            parts = []
            if m.get("val_loss") is not None:
                parts.append(f"val_loss {m['initial_val_loss']:.3f} -> {m['val_loss']:.3f}")
            langs = m.get("languages") or {}
            scores = [v.get("chrf++") for v in langs.values() if v.get("chrf++") is not None]
            if scores:
                parts.append(f"chrF++ {sum(scores) / len(scores):.1f} (mean of {len(scores)})")
            self._print(f"{info['node']}: done ({self.done}/{self.total}) {'; '.join(parts)}")
        elif kind == "node_failed":
            self._print(f"{info['node']}: FAILED: {info['error']}")
        elif kind == "run_finished":
            status = "finished" if not info["not_done"] else f"stopped with {len(info['not_done'])} node(s) not done"
            self._print(f"run {status}")


def make_reporter(cfg, plain: bool = False):
    return PlainReporter(cfg)
