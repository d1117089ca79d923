"""Refusing non-finite outputs: a checkpoint with NaN or infinite weights gives NaN embeddings, and a job
that writes them out and exits 0 hides the problem. Every embedding the library hands out passes through
``check_finite``, which names the input and, when it can, the weights that are not finite."""

from __future__ import annotations

import torch
from torch import nn

from .errors import PEError


class NonFiniteError(PEError, ValueError):
    """A model output holds NaN or infinity."""


def nonfinite_parameters(model: nn.Module, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` parameters or buffers of ``model`` that hold NaN or infinity."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) == limit:
                break
    return bad


def check_finite(values: torch.Tensor, what: str, model: nn.Module | None = None) -> torch.Tensor:
    """``values`` unchanged when every entry is finite; else ``NonFiniteError`` naming ``what`` (the input)
    and the non-finite weights of ``model`` (or the likely cause when the weights are finite)."""
    if bool(torch.isfinite(values).all()):
        return values
    cause = "the model's weights or the input"
    if model is not None:
        bad = nonfinite_parameters(model)
        if bad:
            cause = f"the checkpoint: its weights hold NaN or infinity ({', '.join(bad)})"
        elif values.dtype in (torch.float16, torch.bfloat16) or _has_half(model):
            cause = "an overflow in half precision (try --dtype fp32)"
    raise NonFiniteError(f"the model gave NaN or infinite values for {what}; the cause is {cause}")


def _has_half(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.dtype in (torch.float16, torch.bfloat16)
