"""Adafactor with `transformers`' exact update rule, run over stacks of same-shaped tensors.

`transformers.optimization.Adafactor.step` loops in Python over every parameter and issues ~26
PyTorch ops per tensor (22,500 per step for mT5-large with LoRA r=256 on 864 tensors): on a GPU the
step is bound by launching tiny kernels. Here the parameters of a param group are bucketed by
(shape, dtype, device, step count), each bucket's gradients are stacked into one tensor and the
whole bucket is updated with ~25 ops, so a LoRA model (four A/B shapes) costs ~100 ops per step.

Only the paper's settings are supported (`scale_parameter=False, relative_step=False,
warmup_init=False, beta1=None`): the learning rate is the param group's `lr`, driven by an LR
scheduler. Per parameter the arithmetic is the same as transformers' (same ops, same order), except
that the unused `state["RMS"]` is not computed and the clip RMS is reduced per slice of the stack.

The optimizer state is transformers' per-parameter layout ("step", "exp_avg_sq_row",
"exp_avg_sq_col" or "exp_avg_sq"), each tensor a view into its bucket's stack, so `state_dict()`
and `load_state_dict()` work as for any optimizer, also across the two implementations.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

HALF = (torch.float16, torch.bfloat16)


class Adafactor(torch.optim.Optimizer):
    """Drop-in for `transformers.optimization.Adafactor(..., scale_parameter=False,
    relative_step=False, warmup_init=False)` with the same defaults and param-group keys."""

    def __init__(self, params, lr: float, eps=(1e-30, 1e-3), clip_threshold: float = 1.0,
                 decay_rate: float = -0.8, beta1: float | None = None, weight_decay: float = 0.0,
                 scale_parameter: bool = False, relative_step: bool = False, warmup_init: bool = False,
                 max_stack_numel: int = 2**28):
        defaults = {"lr": lr, "eps": tuple(eps), "clip_threshold": clip_threshold, "decay_rate": decay_rate,
                    "beta1": beta1, "weight_decay": weight_decay, "scale_parameter": scale_parameter,
                    "relative_step": relative_step, "warmup_init": warmup_init}
        _check_group(defaults)
        super().__init__(params, defaults)
        # Bounds the temporaries of one stacked update (2**28 fp32 = 1 GiB per temporary).
        self.max_stack_numel = max_stack_numel
        self._stacks: dict = {}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._stacks = {}  # the loaded per-parameter tensors are re-stacked at the next step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stacks = {}
        for group in self.param_groups:
            _check_group(group)
            buckets = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients.")
                key = (tuple(p.shape), p.dtype, p.grad.dtype, p.device, self.state[p].get("step", 0))
                buckets[key].append(p)
            for params in buckets.values():
                per = max(1, self.max_stack_numel // max(1, params[0].numel()))
                for i in range(0, len(params), per):
                    self._update(group, params[i:i + per], stacks)
        self._stacks = stacks  # only what this step used stays cached
        return loss

    def _update(self, group: dict, params: list, stacks: dict) -> None:
        """transformers' Adafactor.step body for one bucket, with a leading stack dimension."""
        step = self.state[params[0]].get("step", 0) + 1
        for p in params:
            self.state[p]["step"] = step
        grad = torch.stack([p.grad for p in params])
        if grad.dtype in HALF:
            grad = grad.float()
        factored = grad.dim() >= 3  # the parameter itself is >= 2-D
        state = self._stacked_state(params, grad, factored, stacks)

        beta2t = 1.0 - math.pow(step, group["decay_rate"])
        update = (grad**2).add_(group["eps"][0])
        if factored:
            row, col = state
            row.mul_(beta2t).add_(update.mean(dim=-1), alpha=(1.0 - beta2t))
            col.mul_(beta2t).add_(update.mean(dim=-2), alpha=(1.0 - beta2t))
            r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            c_factor = col.unsqueeze(-2).rsqrt()
            update = torch.mul(r_factor, c_factor)
            update.mul_(grad)
        else:
            (sq,) = state
            sq.mul_(beta2t).add_(update, alpha=(1.0 - beta2t))
            update = sq.rsqrt().mul_(grad)

        # Clip each parameter's update by its own RMS (one reduction per slice of the stack).
        n = len(params)
        rms = torch.linalg.vector_norm(update.reshape(n, -1), 2, dim=1) / (params[0].numel() ** 0.5)
        scale = (rms / group["clip_threshold"]).clamp_(min=1.0)
        update.div_(scale.view((n,) + (1,) * (update.dim() - 1)))
        update.mul_(group["lr"])  # scale_parameter=False, relative_step=False: the step size is lr

        if params[0].dtype in HALF:  # fp32 arithmetic, written back in the parameter's dtype
            master = torch.stack(params).float()
            if group["weight_decay"] != 0:
                master.add_(master, alpha=(-group["weight_decay"] * group["lr"]))
            master.sub_(update)
            torch._foreach_copy_(params, master.unbind(0))
            return
        if group["weight_decay"] != 0:
            torch._foreach_add_(params, params, alpha=(-group["weight_decay"] * group["lr"]))
        torch._foreach_sub_(params, update.unbind(0))

    def _stacked_state(self, params: list, grad: torch.Tensor, factored: bool, stacks: dict) -> list:
        """The bucket's state as stacked tensors; each parameter's state entries are views into them."""
        names = ("exp_avg_sq_row", "exp_avg_sq_col") if factored else ("exp_avg_sq",)
        key = tuple(id(p) for p in params)
        cached = self._stacks.get(key)
        if cached is not None and all(self.state[p].get(name) is view
                                      for name, (_, views) in zip(names, cached) for p, view in zip(params, views)):
            stacks[key] = cached
            return [stack for stack, _ in cached]
        built = []
        for name in names:
            shape = _state_shape(name, grad.shape)
            if self.state[params[0]]["step"] == 1:  # first step: zeros, as transformers initialises them
                stack = torch.zeros(shape, dtype=grad.dtype, device=grad.device)
            else:  # loaded or re-bucketed state: copy it into one stack (once)
                parts = [self.state[p][name] for p in params]
                stack = torch.stack([t if t.dtype == grad.dtype and t.device == grad.device else t.to(grad)
                                     for t in parts])
            views = stack.unbind(0)
            for p, view in zip(params, views):
                self.state[p][name] = view
            built.append((stack, views))
        stacks[key] = built
        return [stack for stack, _ in built]


def _state_shape(name: str, stacked: torch.Size) -> tuple:
    if name == "exp_avg_sq_row":
        return tuple(stacked[:-1])
    if name == "exp_avg_sq_col":
        return tuple(stacked[:-2]) + tuple(stacked[-1:])
    return tuple(stacked)


def _check_group(group: dict) -> None:
    """Refuse what this implementation does not do, instead of silently doing something else."""
    unsupported = [k for k in ("scale_parameter", "relative_step", "warmup_init") if group.get(k)]
    if unsupported:
        raise ValueError(f"hql_ray.training.adafactor.Adafactor supports only {'/'.join(unsupported)}=False "
                         "(the paper's settings); use transformers.optimization.Adafactor for the others")
    if group.get("beta1") is not None:
        raise ValueError("hql_ray.training.adafactor.Adafactor supports only beta1=None (no first moment)")
    if group.get("lr") is None or not group["lr"] >= 0:
        raise ValueError(f"hql_ray.training.adafactor.Adafactor needs an explicit lr >= 0, got {group.get('lr')!r}")
    if group.get("clip_threshold", 1.0) <= 0:
        raise ValueError("clip_threshold must be > 0")
