"""Multi-head attention with a fused in-projection (q, k, v stacked in that order) and SDPA.

Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so
reference checkpoints load without renaming. The same module serves self-attention in every block
(optionally with 2D RoPE or a causal mask) and cross-attention in the attention pooling head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear
from .rope import rotate_pairs


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

    def forward(
        self,
        x: torch.Tensor,
        *,
        kv: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` ``(B, Nq, width)`` to ``kv`` ``(B, Nk, width)`` (default: ``x`` itself).

        ``rope`` is a ``(cos, sin)`` pair from ``rope_2d_tables`` applied to q and k; ``causal`` masks
        each query from the keys after it. ``residual`` ``(B, Nq, width)`` is added to
        the output (fused into the out-projection where possible). Returns ``(B, Nq, width)``.

        Layout: the in-projection's output ``(B, N, 3 * width)`` is only viewed as
        ``(B, N, 3, heads, head_dim)``; q, k and v reach SDPA as strided views of it (SDPA reads strides),
        RoPE rotates q and k together in one pass, and SDPA's output is already token-major, so no
        transpose copies are made around attention.
        """
        b, n = x.shape[:2]
        shape = (self.heads, self.head_dim)
        if kv is None:
            qkv = linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, *shape)
            if rope is not None:
                cos, sin = rope
                qk = rotate_pairs(qkv[:, :, :2], cos[:, None, None], sin[:, None, None])
                q, k = qk.unbind(2)
            else:
                q, k = qkv[:, :, 0], qkv[:, :, 1]
            v = qkv[:, :, 2]
        else:
            if rope is not None:
                raise ValueError("rope applies to self-attention only (kv must be None)")
            w_q, w_kv = self.in_proj_weight.split((self.width, 2 * self.width))
            b_q, b_kv = self.in_proj_bias.split((self.width, 2 * self.width))
            q = linear(x, w_q, b_q).view(b, n, *shape)
            k, v = linear(kv, w_kv, b_kv).view(b, kv.shape[1], 2, *shape).unbind(2)
        # (B, N, heads, head_dim) views -> (B, heads, N, head_dim), no copy
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
        out = out.transpose(1, 2).reshape(b, n, self.width)
        return linear(out, self.out_proj.weight, self.out_proj.bias, residual=residual)
