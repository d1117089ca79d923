"""Pictures for the dense tools, drawn with Pillow only (no plotting library needed).

Maps are numpy/torch arrays on the patch grid with values in [0, 1]: ``(H', W')`` scalar maps are coloured
with a built-in colour map, ``(H', W', 3)`` maps are already RGB. They are upsampled to the picture size
and shown next to, or blended over, the image.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# Anchor colours of the perceptually uniform "viridis" map at 0, 1/8, ..., 1 (interpolated linearly).
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def colorize(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A scalar map ``(H', W')`` with values in [0, 1] -> uint8 RGB ``(H', W', 3)`` (viridis colours)."""
    v = np.clip(_numpy(values), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (v - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def rescale(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 1] for display (a constant map becomes 0.5)."""
    v = _numpy(values)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return np.full_like(v, 0.5)
    return (v - lo) / (hi - lo)


def map_to_image(
    values: torch.Tensor | np.ndarray, size: tuple[int, int], *, resample: str = "nearest"
) -> Image.Image:
    """A patch-grid map -> an RGB picture of ``size = (width, height)`` pixels.

    ``values``: ``(H', W')`` in [0, 1] (coloured with ``colorize``) or ``(H', W', 3)`` RGB in [0, 1].
    ``resample``: "nearest" shows patches as blocks, "bilinear" blends them.
    """
    v = _numpy(values)
    if v.ndim == 2:
        rgb = colorize(v)
    elif v.ndim == 3 and v.shape[-1] == 3:
        rgb = (np.clip(v, 0.0, 1.0) * 255).round().astype(np.uint8)
    else:
        raise ValueError(f"map must be (H', W') or (H', W', 3), got {tuple(v.shape)}")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    return Image.fromarray(rgb).resize(size, _RESAMPLE[resample])


def overlay(image: Image.Image, values: torch.Tensor | np.ndarray, *, alpha: float = 0.55) -> Image.Image:
    """Blend a coloured scalar map (``(H', W')`` in [0, 1], upsampled bilinearly) over ``image``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = map_to_image(values, image.size, resample="bilinear")
    return Image.blend(image.convert("RGB"), heat, alpha)


def side_by_side(images: Sequence[Image.Image], *, gap: int = 8, height: int | None = None) -> Image.Image:
    """Images in a row on a white background, each scaled to the same ``height`` (default: the first's)."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    h = height or images[0].height
    scaled = [im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), h), "white")
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def draw_marker(image: Image.Image, xy: tuple[float, float], *, radius: int = 5) -> Image.Image:
    """A copy of ``image`` with a cross-hair circle at pixel ``xy = (x, y)``."""
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    x, y = xy
    d.ellipse((x - radius, y - radius, x + radius, y + radius), outline="red", width=2)
    d.line((x - 2 * radius, y, x + 2 * radius, y), fill="white", width=1)
    d.line((x, y - 2 * radius, x, y + 2 * radius), fill="white", width=1)
    return out


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` saturated colours spread around the hue circle."""
    return [
        tuple(round(c * 255) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))  # type: ignore[misc]
        for i in range(n)
    ]


def draw_matches(
    image1: Image.Image,
    image2: Image.Image,
    points1: np.ndarray,
    points2: np.ndarray,
    *,
    gap: int = 8,
    radius: int = 3,
) -> Image.Image:
    """Two images side by side (same height) with a line from each ``points1[i]`` to ``points2[i]``.

    Points are ``(K, 2)`` pixel coordinates ``(x, y)`` in each image's own size.
    """
    h = image1.height
    canvas = side_by_side([image1, image2], gap=gap, height=h)
    s2 = h / image2.height
    x_off = round(image1.width * h / image1.height) + gap
    d = ImageDraw.Draw(canvas)
    for (x1, y1), (x2, y2), color in zip(points1, points2, distinct_colors(len(points1)), strict=True):
        a = (float(x1), float(y1))
        b = (x_off + float(x2) * s2, float(y2) * s2)
        d.line((*a, *b), fill=color, width=1)
        for x, y in (a, b):
            d.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline="black")
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save ``image`` as PNG at ``path`` (folders created); the file name must end with .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output picture {str(path)!r} must end with .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
