"""GPU memory estimates from shapes (hql_ray.training.memory): mT5-large's counts pinned, the activation probe on tiny."""

from __future__ import annotations

import torch

from hql_ray.training import memory
from hql_ray.settings.config import TARGET_MODULES, Config


def test_mt5_large_static_counts_match_the_measured_load():
    s = memory.shapes("google/mt5-large", tuple(TARGET_MODULES))
    assert (s.quantized, s.fp32_kept, s.other) == (578_813_952, 138_412_032, 512_355_328)
    assert s.lora_per_rank * 256 == 292_552_704 and s.lora_modules == 432
    cfg = Config()
    parts = memory.static_bytes(cfg, [])
    # gpu_qlora measured the 4-bit model with its LoRA at 2.84 GiB after loading (H100, benchmarks/README.md).
    assert round((parts["base"] + parts["lora"]) / memory.GIB, 2) == 2.84
    leaf = memory.static_bytes(cfg, [256, 256, 256])
    assert leaf["frozen_ancestors"] == 3 * 292_552_704 * 2  # bf16 on a GPU
    cfg.model.compute_dtype = "float32"
    assert memory.static_bytes(cfg, [256])["frozen_ancestors"] == 292_552_704 * 4


def test_the_activation_probe_sees_checkpointing_and_ancestors():
    cfg = Config()
    cfg.model.base, cfg.model.lora.r = "tiny", 4
    off = memory.activation_bytes(cfg, [], 4, 32, 16, checkpointing=False)
    on = memory.activation_bytes(cfg, [], 4, 32, 16, checkpointing=True)
    deep = memory.activation_bytes(cfg, [4, 4], 4, 32, 16, checkpointing=True)
    longer = memory.activation_bytes(cfg, [], 4, 64, 16, checkpointing=True)
    assert 0 < on < off and deep > on and longer > on
    parts = memory.node_memory(cfg, [4], batch=4, source_len=32, target_len=16)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total") and parts["activations"] > 0


def test_the_peak_tracker_counts_live_storages():
    tracker = memory.PeakStorage()
    with tracker:
        a = torch.ones(1000)  # 4,000 bytes
        b = torch.ones(500)  # 2,000 bytes, while a lives
        del a, b
        c = torch.ones(250)
    assert tracker.peak == 6000 and tracker.current == 1000
    del c
