"""2D rotary position embedding (RoPE), as pure functions of the grid size.

The head dimension is split in two halves: the first rotates by the column (x) position, the second by
the row (y) position. Within each half, frequency ``i`` is ``theta ** -(2i / (head_dim / 2))`` and is
applied to the interleaved pair ``(2i, 2i + 1)``, rotating ``(a, b) -> (a cos - b sin, b cos + a sin)``.
Positions are integer grid indices, shifted by one when a CLS token exists; the CLS token is not rotated.

Nothing here holds state: tables are recomputed from ``(grid_h, grid_w)`` by the caller on each pass (a
few thousand sines, negligible beside the blocks), so one model can serve any resolution from any
number of threads at once.
"""

from __future__ import annotations

import torch


def rope_2d_tables(
    grid_h: int,
    grid_w: int,
    head_dim: int,
    *,
    cls_token: bool,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of shape ``(tokens, head_dim // 2)``, one entry per rotated pair.

    ``tokens`` is ``grid_h * grid_w`` (+1 first for the CLS token, whose angle is 0). Tokens are in
    row-major order, as produced by the patch embedding. Always float32: the rotation is done in float32.
    """
    half = head_dim // 2  # dimensions per axis
    freqs = 1.0 / (theta ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half))
    offset = 1 if cls_token else 0
    ys = torch.arange(grid_h, device=device, dtype=torch.float32) + offset
    xs = torch.arange(grid_w, device=device, dtype=torch.float32) + offset
    ang_x = (xs[:, None] * freqs)[None, :, :].expand(grid_h, grid_w, -1)  # (H, W, half/2)
    ang_y = (ys[:, None] * freqs)[:, None, :].expand(grid_h, grid_w, -1)
    angles = torch.cat([ang_x, ang_y], dim=-1).reshape(grid_h * grid_w, half)
    if cls_token:
        angles = torch.cat([angles.new_zeros(1, half), angles], dim=0)
    return angles.cos(), angles.sin()


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, heads, tokens, head_dim)`` by tables from ``rope_2d_tables``."""
    dtype = x.dtype
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs.unbind(-1)
    out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    return out.to(dtype)
