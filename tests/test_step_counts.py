"""benchmarks/step_counts.py: dispatcher calls and host syncs of the node's own step (counts, not timings).

The default suite counts the eager variants on a 4+4-layer model (the calls per layer are mT5-large's); the slow
test counts mT5-large's 24+24 layers, the compiled node too, against issue 23's targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import step_counts  # noqa: E402


def test_eager_counts_and_syncs():
    rows = {r["variant"]: r for r in step_counts.measure(4, ["original", "sync-free", "dequantized"])}
    original, sync_free, dequantized = rows["original"], rows["sync-free"], rows["dequantized"]
    # The original step: its loss read back, and transformers' padding_mask.all() for the encoder's mask and the
    # cross-attention's, every step.
    assert original["step_syncs"] == 3 and original["interval_syncs"] == 3 * original["log_every"]
    # Sync-free: none inside the step, one per logging interval (the progress line and the curve read together).
    assert sync_free["step_syncs"] == 0 and sync_free["interval_syncs"] == 1
    assert dequantized["step_syncs"] == 0 and dequantized["interval_syncs"] == 1
    assert sync_free["step"] < original["step"]
    # No dequantization per matmul: fewer calls in the backward (its recompute and input gradients). The forward's
    # F.linear is two calls where bitsandbytes' fused op was one call (its own kernels are not counted: a
    # dispatch mode does not see inside a custom op).
    assert dequantized["backward"] < sync_free["backward"] and dequantized["step"] < sync_free["step"]
    for row in rows.values():
        assert row["step"] == sum(row[p] for p in step_counts.PHASES)
        assert row["optimizer"] < 200  # the stacked Adafactor


@pytest.mark.slow
@pytest.mark.ondemand  # mT5-large's 24 layers compiled on CPU: past CI's time
def test_mt5_large_structure_meets_the_targets():
    rows = {r["variant"]: r for r in step_counts.measure(24, step_counts.DEFAULT)}
    assert rows["original"]["linear4bit"] == 768 and rows["original"]["lora_tensors"] == 864
    assert abs(rows["original"]["step"] - step_counts.BEFORE) < 0.02 * step_counts.BEFORE
    assert rows["compiled"]["compiled"] and rows["compiled"]["graphs"] <= 8
    assert 10 * rows["compiled"]["step"] <= step_counts.BEFORE
    assert rows["compiled"]["interval_syncs"] <= 1
