"""The pre-norm residual block shared by the vision and text towers."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .layer_scale import LayerScale
from .mlp import MLP


class Block(nn.Module):
    """``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))``; LayerScale only when configured."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, *, ls_init_value: float | None = None, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim)
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        if self.fused_residual:  # no LayerScale: the residual add rides on each output projection
            x = self.attn(self.ln_1(x), rope=rope, causal=causal, residual=x)
            return self.mlp(self.ln_2(x), residual=x)
        x = x + self.ls_1(self.attn(self.ln_1(x), rope=rope, causal=causal))
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    @property
    def fused_residual(self) -> bool:
        return isinstance(self.ls_1, nn.Identity) and isinstance(self.ls_2, nn.Identity)
