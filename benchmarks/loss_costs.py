"""What each kind of loss costs a real run (issue 22), computed from the measured step time and the config:
mT5-large, LoRA r=256, batch 8, one H100 (1.036 s/step, benchmarks/README.md, gpu_qlora), the PTHQL tree's
node sizes (31K examples per language, one epoch per level), checkpoints every train.checkpoint_every steps,
a stop's checkpoint at the next train.log_every step.

    python benchmarks/loss_costs.py [--step-s 1.036] [--checkpoint-every 500] [--log-every 10]
"""

from __future__ import annotations

import argparse

EXAMPLES_PER_LANGUAGE = 31_000
DEPTHS = {"root (12 languages)": 12, "level 1 (6)": 6, "level 2 (2)": 2, "leaf (1)": 1}


def hours(steps: float, step_s: float) -> str:
    seconds = steps * step_s
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def rows(step_s: float, every: int, log_every: int, batch: int = 8) -> list[tuple[str, str, str]]:
    """(what is lost, before, now) at the worst moment: just before the next checkpoint."""
    root = DEPTHS["root (12 languages)"] * EXAMPLES_PER_LANGUAGE / batch
    return [
        ("a worker (Ray Train restarts the group)", f"<= {every} steps = {hours(every, step_s)}",
         f"<= {every} steps = {hours(every, step_s)}"),
        ("the driver (kill -9, OOM) with the run folder and storage intact", f"every node in flight from its start: "
         f"up to the root's {root:,.0f} steps = {hours(root, step_s)}", f"<= {every} steps = {hours(every, step_s)} "
         "per node in flight (`--resume`)"),
        ("SIGTERM (Kubernetes, Slurm, `ray job stop`, cloud preemption)", f"as a lost driver (exit 134): up to "
         f"{hours(root, step_s)}", f"<= {log_every} steps = {hours(log_every, step_s)} (a checkpoint at the next "
         "log step; exit 143)"),
        ("the head machine, run folder and storage on shared storage (`--output-dir`, `--storage-path`)",
         f"up to {hours(root, step_s)}", f"<= {every} steps = {hours(every, step_s)} (`--resume --address <new head>`)"),
        ("the head machine, run folder on its local disk", "the whole run", "the whole run: keep `--output-dir` "
         "and `--storage-path` on shared storage"),
        ("a searched level (Tune) mid-search", "the whole search", f"finished trials kept; each unfinished one <= "
         f"{every} steps"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-s", type=float, default=1.036)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()
    print("| node | steps (batch 8) | time on one H100 |\n|---|---|---|")
    for name, languages in DEPTHS.items():
        steps = languages * EXAMPLES_PER_LANGUAGE / 8
        print(f"| {name} | {steps:,.0f} | {hours(steps, args.step_s)} |")
    print("\n| lost | before (e3d78c9) | now |\n|---|---|---|")
    for what, before, now in rows(args.step_s, args.checkpoint_every, args.log_every):
        print(f"| {what} | {before} | {now} |")


if __name__ == "__main__":
    main()
