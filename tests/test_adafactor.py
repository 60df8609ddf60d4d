"""hql_ray.training.adafactor: transformers' Adafactor update rule over stacked tensors, in few dispatcher calls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers.optimization import Adafactor as HFAdafactor
from transformers.optimization import get_linear_schedule_with_warmup

from hql_ray.training.adafactor import Adafactor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.dispatch_count import DispatchCounter  # noqa: E402

PAPER = dict(scale_parameter=False, relative_step=False, warmup_init=False)
# LoRA-like A [r, in] and B [out, r] shapes (two of each, so they stack), a 3-D tensor, 1-D params.
SHAPES = [(8, 32), (8, 32), (8, 88), (32, 8), (32, 8), (88, 8), (2, 8, 12), (32,), (32,), (88,), (1,)]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in SHAPES]


def set_grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        # Different scales per tensor so some updates are clipped (RMS > 1) and some are not.
        p.grad = (torch.randn(p.shape, generator=g) * (10.0 ** (i % 3 - 1))).to(p.dtype)


def train(opt_cls, params, steps: int, lr: float, start: int = 0, optimizer=None, scheduler=None, total=None):
    optimizer = optimizer or opt_cls(params, lr=lr, **PAPER)
    scheduler = scheduler or get_linear_schedule_with_warmup(optimizer, 2, total or steps)
    for step in range(start, start + steps):
        set_grads(params, step)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return optimizer, scheduler


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("lr", [5e-5, 1e-2])
def test_matches_transformers_adafactor(lr):
    start = make_params()
    ours, theirs = make_params(), make_params()
    opt_ours, _ = train(Adafactor, ours, 6, lr, total=8)
    opt_theirs, _ = train(HFAdafactor, theirs, 6, lr, total=8)
    worst = 0.0
    for p0, a, b in zip(start, ours, theirs):
        worst = max(worst, rel(a.detach() - p0.detach(), b.detach() - p0.detach()))  # the summed updates
        sa, sb = opt_ours.state[a], opt_theirs.state[b]
        assert sa["step"] == sb["step"] == 6
        for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
            assert (key in sa) == (key in sb)
            if key in sa:
                worst = max(worst, rel(sa[key], sb[key]))
        assert "RMS" not in sa  # never computed: scale_parameter=False does not read it
    assert worst <= 1e-6


def test_state_dict_round_trip_resumes_identically(tmp_path):
    straight = make_params()
    train(Adafactor, straight, 7, 1e-2, total=7)

    resumed = make_params()
    opt, sched = train(Adafactor, resumed, 4, 1e-2, total=7)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "optim.pt")
    saved = [p.detach().clone() for p in resumed]

    fresh = [torch.nn.Parameter(t) for t in saved]
    opt2 = Adafactor(fresh, lr=1e-2, **PAPER)
    sched2 = get_linear_schedule_with_warmup(opt2, 2, 7)
    loaded = torch.load(tmp_path / "optim.pt", weights_only=True)  # as hql_ray.training.node.load_checkpoint does
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(Adafactor, fresh, 3, 1e-2, start=4, optimizer=opt2, scheduler=sched2)
    for a, b in zip(fresh, straight):
        assert torch.equal(a, b)


def test_state_dict_loads_across_implementations():
    """A checkpoint written with transformers' Adafactor resumes in ours (and gives its next step)."""
    ours, theirs = make_params(), make_params()
    opt_theirs, _ = train(HFAdafactor, theirs, 3, 1e-2, total=6)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    opt_ours = Adafactor(ours, lr=1e-2, **PAPER)
    opt_ours.load_state_dict(opt_theirs.state_dict())
    opt_ours.param_groups[0]["lr"] = opt_theirs.param_groups[0]["lr"] = 1e-2
    for opt, params in ((opt_ours, ours), (opt_theirs, theirs)):
        set_grads(params, 3)
        opt.step()
    for a, b in zip(ours, theirs):
        assert rel(a.detach(), b.detach()) <= 1e-6


def test_dispatcher_calls_per_step_on_many_tensors():
    # 864 tensors as in mT5-large with LoRA r=256 (four A/B shapes), scaled down, plus 1-D params.
    shapes = [(4, 16)] * 288 + [(4, 44)] * 144 + [(16, 4)] * 288 + [(44, 4)] * 144 + [(16,)] * 20
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    counts = {}
    for name, cls in (("ours", Adafactor), ("hf", HFAdafactor)):
        opt = cls(params, lr=5e-5, **PAPER)
        for step in range(2):  # the second step is the steady state (the first also allocates)
            for p in params:
                p.grad = torch.ones_like(p)
            with DispatchCounter() as counter:
                opt.step()
        counts[name] = counter.total
    assert counts["ours"] <= 200
    assert counts["hf"] >= 26 * 864  # what it replaces: ~26 calls per tensor


def test_half_precision_params_match():
    start = [p.detach().to(torch.bfloat16) for p in make_params()]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    train(Adafactor, ours, 3, 1e-2)
    train(HFAdafactor, theirs, 3, 1e-2)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.bfloat16
        assert rel(a.detach().float(), b.detach().float()) <= 1e-2  # within bf16 rounding of the same math


def test_unsupported_settings_are_refused():
    params = make_params()
    with pytest.raises(ValueError, match="relative_step"):
        Adafactor(params, lr=None, relative_step=True)
    with pytest.raises(ValueError, match="scale_parameter"):
        Adafactor(params, lr=1e-3, scale_parameter=True)
    with pytest.raises(ValueError, match="beta1"):
        Adafactor(params, lr=1e-3, beta1=0.9)
    with pytest.raises(ValueError, match="lr"):
        Adafactor(params, lr=None)


def test_weight_decay_matches():
    ours, theirs = make_params(), make_params()
    opt_ours = Adafactor(ours, lr=1e-2, weight_decay=0.1, **PAPER)
    opt_theirs = HFAdafactor(theirs, lr=1e-2, weight_decay=0.1, **PAPER)
    for opt, params in ((opt_ours, ours), (opt_theirs, theirs)):
        for step in range(3):
            set_grads(params, step)
            opt.step()
    for a, b in zip(ours, theirs):
        assert rel(a.detach(), b.detach()) <= 1e-6
