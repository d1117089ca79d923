"""Attention pooling (PE-Core): a learned probe attends over all tokens, then a residual MLP."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .mlp import MLP


class AttentionPool(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.attn = Attention(width, heads)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, width)`` -> ``(B, width)``."""
        q = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        q = self.attn(q, kv=x)
        q = self.mlp(self.layernorm(q), residual=q)
        return q[:, 0]
