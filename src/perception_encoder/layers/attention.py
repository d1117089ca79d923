"""Multi-head attention with a fused in-projection (q, k, v stacked in that order) and SDPA.

Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so
reference checkpoints load without renaming. The same module serves self-attention in every block
(optionally with 2D RoPE or a causal mask) and cross-attention in the attention pooling head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope_2d


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, width)`` -> ``(B, heads, N, head_dim)``."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        kv: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``x`` ``(B, Nq, width)`` to ``kv`` ``(B, Nk, width)`` (default: ``x`` itself).

        ``rope`` is a ``(cos, sin)`` pair from ``rope_2d_tables`` applied to q and k; ``causal`` masks
        each query from the keys after it. Returns ``(B, Nq, width)``.
        """
        if kv is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split((self.width, 2 * self.width))
            b_q, b_kv = self.in_proj_bias.split((self.width, 2 * self.width))
            q = F.linear(x, w_q, b_q)
            k, v = F.linear(kv, w_kv, b_kv).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if rope is not None:
            q, k = apply_rope_2d(q, *rope), apply_rope_2d(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).flatten(2))
