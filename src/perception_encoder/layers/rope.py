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


def rope_1d_tables(
    length: int, head_dim: int, *, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``(length, head_dim // 2)`` of 1-D RoPE over positions ``0 .. length-1``:
    pair ``i`` turns by ``position * theta ** -(2i / head_dim)`` (the PE-AV towers; ``rotate_pairs`` applies
    them). Float32, computed as the reference does: frequencies, then their outer product with positions."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def _tracing() -> bool:
    """Inside ``torch.compile`` / ``torch.export`` or an ONNX export: use plain real arithmetic there
    (inductor fuses it into one kernel; ONNX has no complex numbers)."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair ``(x[..., 2i], x[..., 2i + 1])`` by the angle whose cosine and sine are
    ``cos[..., i]`` and ``sin[..., i]`` (tables broadcast against ``x[..., ::2]``). Computed in float32,
    returned contiguous in ``x``'s dtype and shape. ``x`` may be a strided view (its last dim contiguous).

    Eagerly the pairs are viewed as complex numbers and multiplied by ``cos + i sin``: one kernel reads the
    strided input and writes the result, where the textbook form takes nine passes over memory.
    """
    dtype = x.dtype
    xf = x.float()  # no copy for float32 input
    if _tracing() or not _complex_viewable(xf):
        a, b = xf.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2).to(dtype)
    z = torch.view_as_complex(xf.unflatten(-1, (-1, 2)))
    return torch.view_as_real(z * torch.complex(cos, sin)).flatten(-2).to(dtype)


def _complex_viewable(x: torch.Tensor) -> bool:
    """Whether ``view_as_complex`` accepts ``x`` split into pairs (float32, pair-aligned strides)."""
    if x.dtype != torch.float32 or x.stride(-1) != 1 or x.storage_offset() % 2:
        return False
    return all(s % 2 == 0 for s, n in zip(x.stride()[:-1], x.shape[:-1], strict=True) if n > 1)


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, heads, tokens, head_dim)`` by tables from ``rope_2d_tables``."""
    return rotate_pairs(x, cos, sin)
