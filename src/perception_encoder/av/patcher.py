"""The patcher in front of every PE-AV tower: a CLS token, then a 1-D ResNet block with masked GroupNorm.

Tokens ``(B, T, C)`` get a learned CLS token prepended, then ``x + block2(block1(x))`` over the time axis,
each block being GroupNorm (one group) -> SiLU -> 3-tap convolution. With a padding mask the norm's mean
and variance are taken over the valid positions only and its output is zeroed at the padded ones, so
the convolutions see zeros there, exactly as at the end of an unpadded sequence: valid outputs do not
depend on what the padding holds.

Parameter names follow the reference (``cls_token``, ``resnet_block.block1.groupnorm`` / ``project``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm over ``(B, C, L)``; with ``mask`` ``(B, L)`` (True = valid) the statistics skip padded
    positions and padded outputs are zero. Without a mask it is ``nn.GroupNorm``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if mask is None:
            return super().forward(x)
        b, c, n = x.shape
        g = self.num_groups
        m = mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, L) over (B, G, C/G, L)
        xg = x.view(b, g, c // g, n)
        count = m.sum(dim=(2, 3), keepdim=True) * (c // g)
        mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
        var = (((xg - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
        out = ((xg - mean) / torch.sqrt(var + self.eps)).view(b, c, n)
        if self.affine:
            out = out * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)
        return out * mask[:, None, :].to(out.dtype)


class ConvBlock1d(nn.Module):
    """Masked GroupNorm (one group) -> SiLU -> Conv1d(k=3, same padding)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.groupnorm = MaskedGroupNorm(num_groups=1, num_channels=width)
        self.project = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.project(F.silu(self.groupnorm(x, mask)))


class ResnetBlock1d(nn.Module):
    """``x + block2(block1(x))`` on ``(B, C, L)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block1 = ConvBlock1d(width)
        self.block2 = ConvBlock1d(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.block2(self.block1(x, mask), mask)


class Patcher(nn.Module):
    """tokens ``(B, T, C)`` and mask ``(B, T)`` or ``None`` -> ``(B, 1 + T, C)`` with the CLS token first,
    and the mask with a valid CLS position prepended."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.resnet_block = ResnetBlock1d(width)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if mask is not None:
            mask = F.pad(mask.bool(), (1, 0), value=True)
        return self.resnet_block(x.transpose(1, 2), mask).transpose(1, 2), mask
