"""What dropout drawn per example (`hql_ray.training.dropout`) costs against torch's dropout, side by side.

Per site, forward + backward on tensors of mT5-large's shapes at batch 8 x 128 tokens (hidden 1024, feed-
forward 2816, attention probabilities 16 heads x 128 x 128): torch's `nn.Dropout` (one RNG call, batch-
shaped masks) against `ExampleDropout` (a 32-bit hash of each element's key and coordinates in int64 ops),
eager and, with --compile, under torch.compile (the hash chain fused into one kernel). Then one training
step of a small mT5 (forward + backward) with its dropouts as they come and after `dropout.install`.

    python benchmarks/dropout_cost.py                 # CPU here; on a GPU machine it times CUDA
    python benchmarks/dropout_cost.py --compile       # adds the compiled hash (minutes of compiling on CPU)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hql_ray.training import dropout  # noqa: E402

SHAPES = {"hidden 8x128x1024": (8, 128, 1024), "feed-forward 8x128x2816": (8, 128, 2816),
          "attention 8x16x128x128": (8, 16, 128, 128)}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after 2 warm-ups."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def site_step(module, x: torch.Tensor):
    def run():
        x.grad = None
        module(x).sum().backward()
    return run


def per_site(device: torch.device, repeats: int, compile_: bool) -> None:
    print("per site, forward + backward (median ms):")
    state = dropout.DropoutState()
    state.keys = dropout.example_keys(0, 0, range(8)).to(device)
    ours = dropout.ExampleDropout(0.1, 12345, state).train()
    compiled = torch.compile(ours) if compile_ else None
    for name, shape in SHAPES.items():
        x = torch.randn(shape, device=device, requires_grad=True)
        base = timed(site_step(torch.nn.Dropout(0.1).train(), x), device, repeats)
        mine = timed(site_step(ours, x), device, repeats)
        line = f"  {name:26s} torch {base * 1e3:8.2f}   per example {mine * 1e3:8.2f}   ratio {mine / base:5.2f}"
        if compiled is not None:
            fused = timed(site_step(compiled, x), device, repeats)
            line += f"   compiled {fused * 1e3:8.2f}   ratio {fused / base:5.2f}"
        print(line)


def model_step(device: torch.device, repeats: int) -> None:
    from transformers import MT5Config, MT5ForConditionalGeneration

    config = MT5Config(vocab_size=512, d_model=256, d_kv=32, d_ff=704, num_layers=4, num_decoder_layers=4,
                       num_heads=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.1)
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(2, 512, (8, 128), device=device),
             "attention_mask": torch.ones(8, 128, dtype=torch.long, device=device),
             "labels": torch.randint(2, 512, (8, 32), device=device)}
    times = {}
    for label, install in (("torch's dropout", False), ("per example", True)):
        model = MT5ForConditionalGeneration(config).to(device).train()
        if install:
            dropout.install(model)
        tagged = dropout.tag(batch, 0, 0, range(8))
        tagged[dropout.KEYS] = tagged[dropout.KEYS].to(device)

        def step():
            model.zero_grad(set_to_none=True)
            model(**dropout.use(model, tagged)).loss.backward()
        times[label] = timed(step, device, repeats)
    base, mine = times["torch's dropout"], times["per example"]
    print(f"one training step of an mT5 (d_model 256, 4+4 layers, 8 x 128 -> 32 tokens): torch's dropout "
          f"{base * 1e3:.1f} ms, per example {mine * 1e3:.1f} ms, ratio {mine / base:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the hash under torch.compile")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"dropout cost on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    per_site(device, args.repeats, args.compile)
    model_step(device, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
