"""The optimiser (LAMB, or AdamW), its parameter groups, and the warm-up + cosine learning-rate schedule.

LAMB (You et al., "Large Batch Optimization for Deep Learning", 2019), per parameter tensor ``p`` with
gradient ``g`` at step ``t``::

    m = b1 m + (1 - b1) g              v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p
    trust = ||p|| / ||u||   (1 when either norm is 0; optionally capped at max_trust)
    p = p - lr * trust * u

i.e. an Adam step with decoupled weight decay, rescaled per tensor so its norm is ``lr * ||p||``. PE trains
with it at lr about 2e-3 (SPEC §9). It is written here (about 40 lines) rather than taken from a package,
to keep the training extra light; ``tests/test_train_optim.py`` checks it against the formula above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig


class Lamb(torch.optim.Optimizer):
    """LAMB. ``adapt`` (per group, default True) turns the trust ratio on; with ``adapt=False`` the group
    takes plain AdamW steps. ``max_trust`` caps the ratio (None: no cap)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        adapt: bool = True,
        max_trust: float | None = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"Lamb: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"Lamb: eps must be > 0, got {eps}")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=adapt, max_trust=max_trust
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                # half-precision weights keep their moments in float32; float32/float64 in their own dtype
                dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, dtype=dtype, memory_format=torch.preserve_format
                    )
                state["step"] += 1
                t = state["step"]
                g, w = p.grad.to(dtype), p.detach().to(dtype)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(w, alpha=group["weight_decay"])
                if group["adapt"]:
                    w_norm, u_norm = w.norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    if group["max_trust"] is not None:
                        trust = trust.clamp(max=group["max_trust"])
                    update.mul_(trust)
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Parameters left out of weight decay: biases, norm gains, scalars, embeddings, the pooling probe."""
    return param.ndim < 2 or "embedding" in name or name.endswith("probe") or name.endswith("logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of trainable parameters: with and without weight decay (``no_decay``)."""
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """LAMB or AdamW over ``model``'s trainable parameters, with ``param_groups``."""
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    betas = (float(config.betas[0]), float(config.betas[1]))
    if config.name == "lamb":
        return Lamb(groups, lr=config.lr, betas=betas, eps=config.eps)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps)
    raise ValueError(f"unknown optimiser {config.name!r} (use 'lamb' or 'adamw')")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up from ``1/warmup``
    to 1 over ``warmup_steps``, then constant or a cosine from 1 toward ``min_ratio`` (reached one step after the last)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``lr_factor`` once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, config.warmup_steps, config.schedule, config.min_lr_ratio),
    )
