"""PCA of patch features shown as colours: the first three principal components -> R, G, B.

Deterministic: exact PCA (no randomised solver) in float64, and each component's sign fixed so that its
largest-magnitude loading is positive. With ``foreground_threshold`` the first component separates object
from background (its sign chosen so the image border reads as background), the colours come from a second
PCA over the foreground patches only, and background patches are black.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import render


def _as_tensor(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(features).detach().cpu()
    if t.ndim not in (3, 4):
        raise ValueError(f"features must be (H', W', C) or (B, H', W', C), got {tuple(t.shape)}")
    return t.double()


def principal_components(x: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``x`` ``(M, C)`` -> projections ``(M, n)`` on the top-``n`` principal axes (centred, sign-fixed)."""
    m, c = x.shape
    if not 1 <= n <= min(m, c):
        raise ValueError(f"n={n} components need 1 <= n <= min(patches={m}, channels={c})")
    x = x - x.mean(dim=0, keepdim=True)
    if m <= c:
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        axes = vh[:n].T  # (C, n)
    else:  # many rows: the C x C covariance is the smaller problem
        _, vecs = torch.linalg.eigh(x.T @ x)
        axes = vecs[:, -n:].flip(-1)
    # sign convention: the largest-magnitude loading of each axis is positive
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    return x @ axes


def _minmax(p: torch.Tensor) -> torch.Tensor:
    """Per-column min-max scaling to [0, 1] (a constant column becomes 0.5)."""
    lo, hi = p.min(0).values, p.max(0).values
    span = hi - lo
    return torch.where(span > 1e-12, (p - lo) / span.clamp_min(1e-12), torch.full_like(p, 0.5))


def _border(shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean mask of the outermost ring of patches, for (H', W') or (B, H', W')."""
    b = torch.zeros(shape, dtype=torch.bool)
    b[..., 0, :] = b[..., -1, :] = True
    b[..., :, 0] = b[..., :, -1] = True
    return b


def foreground_mask(
    features: torch.Tensor | np.ndarray, threshold: float = 0.5, *, invert: bool = False
) -> torch.Tensor:
    """Foreground patches from the first principal component: bool ``(H', W')`` (or ``(B, H', W')``).

    The component is scaled to [0, 1]; patches above ``threshold`` are foreground. Its sign is chosen so
    that patches on the image border score lower on average than the rest (objects are usually inside the
    frame); ``invert=True`` flips the decision when that guess is wrong.
    """
    f = _as_tensor(features)
    grid = f.shape[:-1]
    first = _minmax(principal_components(f.reshape(-1, f.shape[-1]), 1))[:, 0].reshape(grid)
    border = _border(tuple(grid))
    if (grid[-1] > 2 and grid[-2] > 2) and first[border].mean() > first[~border].mean():
        first = 1.0 - first
    if invert:
        first = 1.0 - first
    return first > threshold


def pca_rgb(
    features: torch.Tensor | np.ndarray,
    n: int = 3,
    *,
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
) -> torch.Tensor:
    """Patch features ``(H', W', C)`` -> float32 ``(H', W', n)`` in [0, 1]: the top-``n`` principal
    components, each min-max scaled (``n = 3`` gives an RGB picture).

    A batch ``(B, H', W', C)`` is fitted jointly (shared axes, so colours are comparable across images)
    and gives ``(B, H', W', n)``. With ``foreground_threshold`` (e.g. 0.5, see ``foreground_mask``) the
    components are fitted on foreground patches only and background patches are 0 (black).
    """
    f = _as_tensor(features)
    grid, c = f.shape[:-1], f.shape[-1]
    rows = f.reshape(-1, c)
    out = torch.zeros(rows.shape[0], n, dtype=torch.float64)
    if foreground_threshold is None:
        out = _minmax(principal_components(rows, n))
    else:
        fg = foreground_mask(f, foreground_threshold, invert=invert_foreground).reshape(-1)
        if int(fg.sum()) < n:
            raise ValueError(
                f"only {int(fg.sum())} foreground patches at threshold {foreground_threshold}; "
                f"lower the threshold or set invert_foreground"
            )
        out[fg] = _minmax(principal_components(rows[fg], n))
    return out.reshape(*grid, n).float()


def pca_figure(
    image: Image.Image, rgb: torch.Tensor | np.ndarray, *, resample: str = "nearest", gap: int = 8
) -> Image.Image:
    """The image and its PCA map (``(H', W', 3)`` or ``(H', W', 1)`` in [0, 1]) upsampled to the image's
    size, side by side."""
    v = torch.as_tensor(rgb).detach().cpu().float()
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]  # one component: shown with the colour map
    pca_img = render.map_to_image(v, image.size, resample=resample)
    return render.side_by_side([image, pca_img], gap=gap)
