"""What one Ray Train run costs the machine: bare one-worker fits (the loop does nothing) through the node
trainer as hql-ray runs it (no PlacementGroupCleaner without the dashboard, no DatasetManager without datasets),
through the node trainer with Ray's own callbacks (both actors back), and through Ray's TorchTrainer itself;
side by side, alternating, in one local Ray without the dashboard.

Run: .venv/bin/python benchmarks/fit_cost.py [--fits 4 --rounds 2]     (~5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CpuMeter, print_table, quiet, start_ray  # noqa: E402


def trainers() -> dict:
    from ray.train.torch import TorchTrainer

    from hql_ray.orchestration.controller import trainer_class

    node_trainer = trainer_class()

    class WithRaysCallbacks(node_trainer):
        def _create_default_callbacks(self):  # Ray's own list: every actor a run starts
            return TorchTrainer._create_default_callbacks(self)

    return {"node trainer": node_trainer, "node trainer, Ray's callbacks": WithRaysCallbacks,
            "Ray's TorchTrainer": TorchTrainer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=4, help="fits per variant and round (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the variants alternating (default 2)")
    args = parser.parse_args(argv)
    quiet()
    start_ray(num_cpus=2, num_gpus=4)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    def loop(config):
        pass

    storage, rows = tempfile.mkdtemp(prefix="hql-bench-fit-cost-"), {}
    for round_ in range(args.rounds):
        for name, trainer in trainers().items():
            t0 = time.time()
            with CpuMeter() as meter:
                for i in range(args.fits):
                    trainer(loop, scaling_config=ScalingConfig(num_workers=1, use_gpu=True),
                            torch_config=TorchConfig(backend="gloo"),
                            run_config=RunConfig(name=f"fit_{round_}_{len(rows)}_{i}", storage_path=storage)).fit()
            rows.setdefault(name, []).append((meter.seconds / args.fits, (time.time() - t0) / args.fits))
    print(f"bare one-worker fits on a logical GPU slot, {args.fits} per variant x {args.rounds} rounds:")
    print_table(["variant", "CPU-s per fit (every process), by round", "wall s per fit, by round"],
                [[name, " / ".join(f"{c:.2f}" for c, _ in vals), " / ".join(f"{w:.1f}" for _, w in vals)]
                 for name, vals in rows.items()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
