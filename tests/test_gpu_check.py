"""benchmarks/gpu_check.py --dry-run: the GPU check's stages on CPU (tiny widths, a few steps), rows on disk.

The default suite runs the eager rungs, one of them cut at a 1 s limit (its row says so; the rungs after it run
in a fresh process) and the train_node pass; the slow one runs every rung, the compiled ones included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dry_run(tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    by_kind: dict = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    return by_kind, proc.stdout


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_dry_run_streams_rows_and_survives_a_rung_cut_short(tmp_path):
    rows, log = dry_run(tmp_path, "--rungs", "1", "2", "3", "4", "5", "6", "--rung-limit", "3=1")
    (pre,) = rows["preflight"]
    assert {"torch", "transformers", "peft", "bitsandbytes", "datasets", "penman", "smatch"} <= set(pre["versions"])
    rungs = {r["rung"]: r for r in rows["rung"]}
    assert list(rungs) == ["1 today", "2 +sync-free", "3 +bf16", "4 -checkpointing", "5 +dequantized base",
                           "6 tokens 512"]
    assert rungs["3 +bf16"]["error"] == "stopped at its 1 s limit"  # and 4-6 ran in a second process
    assert log.count("[rungs] node set up") == 2
    today, sync_free = rungs["1 today"], rungs["2 +sync-free"]
    assert today["syncs"] == 3 and sync_free["syncs"] == 0  # the loss read and transformers' two mask reads
    assert sync_free["losses"] == today["losses"] and sync_free["loss_diff"] == 0
    # bf16 autocast: bitsandbytes' product and the cached weight's are both bf16 GEMMs, maybe not bit for bit
    assert rungs["5 +dequantized base"]["losses"] == pytest.approx(rungs["4 -checkpointing"]["losses"], rel=1e-3)
    budget = rungs["6 tokens 512"]
    assert budget["batch_tokens"] == 512 and budget["examples_per_step"] != 8
    for row in (today, sync_free, budget):
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
    (node,) = rows["node"]
    assert node["steps"] == 4 and node["adapter_tensors"] > 0 and node["val_loss"] <= node["initial_val_loss"]
    (summary,) = rows["summary"]
    assert [line.split()[:3] for line in summary["lines"]] == [["FAIL", "batch", "8:"], ["FAIL", "token", "budgets:"]]
    assert "MFU989" in log and "node pass (train_node, LocalContext, no Ray)" in log


@pytest.mark.slow
@pytest.mark.ondemand  # mT5-large's 24 layers compiled on CPU: past CI's time
def test_dry_run_every_rung_compiled_ones_too(tmp_path):
    rows, _ = dry_run(tmp_path, "--skip-node")
    rungs = {r["rung"]: r for r in rows["rung"]}
    assert len(rungs) == 10 and not [r for r in rungs.values() if r.get("error")]
    compiled = rungs["8 compiled"]
    assert compiled["compiled"] and compiled["graphs"] >= 2 and compiled["recompiles"] <= 2
    assert compiled["loss_diff"] < 2e-2  # against rung 1's fp32 eager losses: bf16, and compiled dropout
    assert rungs["9 compiled tokens 1024"]["compiled"]
    assert rungs["10 compiled +CUDA graphs"]["compiled"]  # CPU: compiled without CUDA graphs (a warning)
