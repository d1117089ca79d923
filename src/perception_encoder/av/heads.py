"""Contrastive heads: LayerNorm (eps 1e-6) then a bias-free linear map into the joint space."""

from __future__ import annotations

import torch
from torch import nn


class ContrastiveHead(nn.Module):
    """``(..., in_dim)`` -> ``(..., out_dim)``: ``proj(layer_norm(x))``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layer_norm(x))


class LogitScale(nn.Module):
    """A learned ``scale`` and ``bias`` turning raw dot products into logits: ``dot * scale + bias`` (no
    exponential; sigmoid of that is the match probability the pair was trained for)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dots: torch.Tensor) -> torch.Tensor:
        return dots * self.scale + self.bias
