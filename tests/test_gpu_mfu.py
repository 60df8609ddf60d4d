"""benchmarks/gpu_mfu.py --dry-run: every rung of the MFU ladder runs on a tiny model on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_variant(tmp_path):
    out = tmp_path / "mfu.jsonl"
    # A 5 s compile limit: on this CPU the compiled rung falls back to eager (the fallback is tested);
    # where it compiles in time, the row is the compiled one.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_mfu.py"), "--dry-run", "--examples", "120", "--batch-size", "4",
         "--compile-timeout", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["V0 today", "V1 +adafactor", "V2 +lazy loss", "V3 +bf16", "V4 +compile",
                          "V5 +tokens=1024", "V6 +chunked CE"]
    # Same batches and seed: the stacked Adafactor and the lazy loss read-back change nothing.
    assert rows["V1 +adafactor"]["loss_last"] == pytest.approx(rows["V0 today"]["loss_last"], rel=1e-6)
    assert rows["V2 +lazy loss"]["loss_last"] == pytest.approx(rows["V1 +adafactor"]["loss_last"], rel=1e-6)
    assert rows["V3 +bf16"]["loss_last"] == pytest.approx(rows["V2 +lazy loss"]["loss_last"], rel=2e-2)
    # The chunked loss is the same loss on the same token-budget batches.
    assert rows["V6 +chunked CE"]["loss_last"] == pytest.approx(rows["V5 +tokens=1024"]["loss_last"], rel=2e-2)
    assert rows["V5 +tokens=1024"]["examples_per_step"] != 4  # the budget, not the batch size, sets the batch
    for r in rows.values():
        assert r["tflops"] > 0 and r["real_tok_s"] > 0
    assert "profile" in rows["V0 today"] and "profile" in rows["V6 +chunked CE"]
    assert rows["V0 today"]["profile"]["aten_ops_per_step"] > 0
