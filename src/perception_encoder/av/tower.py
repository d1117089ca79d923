"""The transformer every PE-AV tower shares (audio, video, fusion): patcher, layers, norm, output map.

Layer: ``x + attn(rmsnorm(x))``, then ``x + swiglu(rmsnorm(x))``. Attention: separate q, k, v, o
projections, RMSNorm over each head of q and k, 1-D RoPE on interleaved pairs (``layers.rope``), SDPA
with the padding mask on the keys. After the layers: RMSNorm and a bias-free linear map; position 0 (the
CLS token) is the pooled output, the rest the per-frame outputs.

Parameter names follow the reference and transformers (``layers.N.self_attn.q_proj``, ``q_norm``,
``mlp.gate_proj``, ``input_layernorm``, ``post_attention_layernorm``, ``norm``, ``output``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.rope import rope_1d_tables, rotate_pairs
from .configs import TowerConfig
from .patcher import Patcher


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with per-head q/k RMSNorm and 1-D RoPE."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        c = config
        self.heads, self.head_dim = c.num_heads, c.head_dim
        inner = c.num_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, inner, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, inner, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, inner, bias=c.attention_bias)
        self.o_proj = nn.Linear(inner, c.hidden_size, bias=c.attention_bias)
        self.q_norm = RMSNorm(c.head_dim, c.norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``x`` ``(B, N, C)``; ``rope`` tables ``(N, head_dim / 2)``; ``mask`` ``(B, 1, 1, N)`` bool (True:
        a key to attend to) or ``None``. Returns ``(B, N, C)``."""
        b, n = x.shape[:2]
        shape = (b, n, self.heads, self.head_dim)
        cos, sin = rope[0][:, None], rope[1][:, None]  # broadcast over heads: (N, 1, head_dim / 2)
        q = rotate_pairs(self.q_norm(self.q_proj(x).view(shape)), cos, sin).transpose(1, 2)
        k = rotate_pairs(self.k_norm(self.k_proj(x).view(shape)), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class Layer(nn.Module):
    """Pre-norm attention and SwiGLU, each added to the residual stream."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(config)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Tower(nn.Module):
    """``(B, T, C)`` inputs and their mask ``(B, T)`` (True = valid; ``None``: all valid) -> per-position
    outputs ``(B, T, C)`` and the pooled output ``(B, C)`` (the CLS position)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Patcher(config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.output = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.embeddings(x, mask)
        # tables per call (no state): positions 0 .. T, the CLS token at 0
        rope = rope_1d_tables(x.shape[1], self.config.head_dim, theta=self.config.rope_theta, device=x.device)
        keys = mask[:, None, None, :] if mask is not None else None
        for layer in self.layers:
            x = layer(x, rope, keys)
        x = self.output(self.norm(x))
        return x[:, 1:], x[:, 0]
