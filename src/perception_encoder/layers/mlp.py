"""The transformer MLP: Linear, exact GELU, Linear."""

from __future__ import annotations

import torch
from torch import nn

from .linear import linear


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., width)`` -> ``(..., width)``; ``residual`` (same shape) is added to the output."""
        h = linear(x, self.c_fc.weight, self.c_fc.bias, gelu=True)
        return linear(h, self.c_proj.weight, self.c_proj.bias, residual=residual)
