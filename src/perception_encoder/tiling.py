"""PE-Lang input layouts for language models: "thumbnail + tiles", native resolution, and stitching.

PerceptionLM feeds PE-Lang one or more fixed-size squares per image (SPEC §6):

* ``tile_grid`` picks the tile grid ``(grid_w, grid_h)`` for an image, exactly as the reference release.
* ``tile_image`` returns the thumbnail (the whole image squashed to one tile) followed by the tiles of the
  image stretched to ``(grid_h * tile_size, grid_w * tile_size)``, row-major, top row first.
* ``native_resolution_image`` is the alternative without tiles: one image at (about) its own size, sides
  rounded to multiples of the patch size.
* ``stitch_tiles`` puts per-tile patch features back together into one feature map of the whole image.

Resampling is Pillow's bicubic on the RGB image (the reference resizes PIL images with torchvision, which
calls Pillow); pixels are then normalised like every other input (mean = std = 0.5 by default).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .transforms import DEFAULT_MEAN, DEFAULT_STD, to_normalized_tensor

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

__all__ = [
    "tile_grid",
    "candidate_grids",
    "tile_image",
    "num_tiles",
    "native_resolution_size",
    "native_resolution_image",
    "stitch_tiles",
    "as_rgb_image",
]


# --- the grid choice -------------------------------------------------------------------------------------


def candidate_grids(max_tiles: int) -> dict[float, list[tuple[int, int]]]:
    """Every grid ``(w, h)`` with ``w * h <= max_tiles``, keyed by aspect ratio ``w / h``.

    Built for ``n = max_tiles … 1`` and, for each ``n``, every ``(w, n // w)`` with ascending ``w``; a dict
    keeps its keys in first-insertion order and each key's grids in the order met. Both orders decide
    ties in ``tile_grid``, as in the reference release.
    """
    _check_max_tiles(max_tiles)
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for n in range(max_tiles, 0, -1):
        for w in range(1, n + 1):
            if n % w == 0:
                by_ratio.setdefault(w / (n // w), []).append((w, n // w))
    return by_ratio


def _aspect_fit(img_w: int, img_h: int, canvas_w: int, canvas_h: int) -> tuple[float, float]:
    """The size of the image scaled (aspect preserved) to fit inside the canvas.

    Same arithmetic as the reference (floats, one side floored), since ties between grids depend on it.
    """
    scale = img_w / img_h
    factor = min(canvas_w / img_w, canvas_h / img_h)
    if scale > 1.0:
        new_w = factor * img_w
        return new_w, math.floor(new_w / scale)
    new_h = factor * img_h
    return math.floor(new_h * scale), new_h


def _best_fitting_grid(img_w: int, img_h: int, tile_size: int, max_tiles: int) -> tuple[int, int] | None:
    """Among grids whose canvas holds the whole image, the one where the scaled image is largest.

    Largest means the longer fitted height (landscape or square images) or width (portrait); ties go to
    the later candidate, so small images are upscaled onto the largest grid. ``None`` when none holds it.
    """
    portrait = img_w / img_h < 1.0
    best: tuple[int, int] | None = None
    best_fit: tuple[float, float] = (0.0, 0.0)
    for grids in candidate_grids(max_tiles).values():
        for gw, gh in grids:
            if gw * tile_size < img_w or gh * tile_size < img_h:
                continue
            fit = _aspect_fit(img_w, img_h, gw * tile_size, gh * tile_size)
            side = 0 if portrait else 1
            if best is None or fit[side] >= best_fit[side]:
                best, best_fit = (gw, gh), fit
    return best


def _closest_ratio_grid(img_w: int, img_h: int, max_tiles: int) -> tuple[int, int]:
    """Fallback for images larger than every canvas: the grid whose aspect ratio is closest.

    Landscape/square images consider ratios ``<= w/h`` (closest by ``|k - t|``) and take the widest grid of
    that ratio; portrait images consider ratios ``> w/h`` (closest by ``|1/k - 1/t|``) and take the tallest.
    ``min``/``max`` keep the first of equals, as the reference does.
    """
    target = img_w / img_h
    grids = candidate_grids(max_tiles)
    if target >= 1:
        ratio = min((k for k in grids if k <= target), key=lambda k: abs(k - target))
        return max(grids[ratio], key=lambda g: g[0])
    ratio = min((k for k in grids if k > target), key=lambda k: abs(1 / k - 1 / target))
    return max(grids[ratio], key=lambda g: g[1])


def tile_grid(width: int, height: int, max_tiles: int = 36, tile_size: int = 448) -> tuple[int, int]:
    """The tile grid ``(grid_w, grid_h)`` PerceptionLM uses for a ``width x height`` image.

    With ``max_tiles=36`` and 448 px tiles: 224x224 and 448x448 -> (6, 6); 1920x1080 -> (8, 4);
    800x600 -> (7, 5); 300x800 -> (4, 9); 4000x3000 -> (4, 3). With ``max_tiles=4``: 1920x1080 -> (2, 2).

    Rule (SPEC §6): among grids with ``w * tile_size >= width`` and ``h * tile_size >= height`` keep the one
    on which the aspect-preserving fit is largest (ties to the later candidate); if none holds the image,
    take the grid with the closest aspect ratio (see ``_closest_ratio_grid``).
    """
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_max_tiles(max_tiles)
    width, height = int(width), int(height)
    grid = _best_fitting_grid(width, height, int(tile_size), max_tiles)
    return grid if grid is not None else _closest_ratio_grid(width, height, max_tiles)


def num_tiles(width: int, height: int, max_tiles: int = 36, tile_size: int = 448) -> int:
    """How many squares ``tile_image`` returns for such an image: ``1 + grid_w * grid_h``, or 1 when
    ``max_tiles == 1`` (the thumbnail alone)."""
    if max_tiles == 1:
        return 1
    gw, gh = tile_grid(width, height, max_tiles, tile_size)
    return 1 + gw * gh


def _check_max_tiles(max_tiles: int) -> None:
    if not isinstance(max_tiles, (int, np.integer)) or isinstance(max_tiles, bool) or max_tiles < 1:
        raise ValueError(f"max_tiles must be a positive integer, got {max_tiles!r}")


# --- images in -------------------------------------------------------------------------------------------


def as_rgb_image(image: ImageLike) -> Image.Image:
    """A path, PIL image, uint8 array ``(H, W)`` / ``(H, W, 3|4)``, or uint8 tensor ``(3, H, W)`` -> RGB PIL.

    Conversion to RGB happens first, as PerceptionLM's loaders do (``Image.open(p).convert("RGB")``)
    before resizing.
    """
    if isinstance(image, (str, os.PathLike, bytes)):
        from .images import load_image

        return load_image(image).convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be uint8 (3, H, W), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
        if image.shape[-1] == 1:
            image = image[..., 0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"an image array must be uint8 in 0..255, got dtype {image.dtype}; "
                "scale and convert it (e.g. (x * 255).round().astype(np.uint8))"
            )
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise TypeError(
        f"image must be a path, a PIL image, a uint8 numpy array or a uint8 tensor, got {type(image).__name__}"
    )


# --- thumbnail + tiles -----------------------------------------------------------------------------------


def tile_image(
    image: ImageLike,
    max_tiles: int = 36,
    tile_size: int = 448,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut an image into PerceptionLM's "thumbnail + tiles" input.

    Args:
        image: a path, PIL image, uint8 array ``(H, W[, 3])`` or uint8 tensor ``(3, H, W)``.
        max_tiles: the most tiles (16 and 36 in PerceptionLM). ``1`` is the reference's single-tile
            ("vanilla") mode: the squashed image alone, shape ``(1, 3, S, S)``, grid ``(1, 1)``.
        tile_size: side ``S`` of every square in pixels (448 for PE-Lang).
        mean, std: per-channel normalisation (0.5 for every PE model).

    Returns:
        ``(tiles, (grid_w, grid_h))``: ``tiles`` is float32 ``(1 + grid_w * grid_h, 3, S, S)``; entry 0 is
        the thumbnail (the whole image squashed bicubic to ``S x S``), then the image resized bicubic to
        exactly ``(grid_h * S, grid_w * S)`` -- stretched, not padded -- cut row-major, top row first.
    """
    img = as_rgb_image(image)
    gw, gh = tile_grid(img.width, img.height, max_tiles, tile_size)
    thumbnail = to_normalized_tensor(img.resize((tile_size, tile_size), Image.BICUBIC), mean, std)
    if max_tiles == 1:
        return thumbnail.unsqueeze(0), (1, 1)
    canvas = to_normalized_tensor(img.resize((gw * tile_size, gh * tile_size), Image.BICUBIC), mean, std)
    # (3, gh*S, gw*S) -> (gh, gw, 3, S, S): row-major tiles
    tiles = (
        canvas.view(3, gh, tile_size, gw, tile_size)
        .permute(1, 3, 0, 2, 4)
        .reshape(-1, 3, tile_size, tile_size)
    )
    return torch.cat([thumbnail.unsqueeze(0), tiles], dim=0), (gw, gh)


# --- native resolution -----------------------------------------------------------------------------------


def native_resolution_size(
    width: int,
    height: int,
    patch_size: int = 14,
    *,
    max_side: int | None = None,
    max_tokens: int | None = None,
    pool: int = 1,
) -> tuple[int, int]:
    """The ``(width, height)`` in pixels that ``native_resolution_image`` resizes to.

    Each side is rounded to the nearest multiple of ``unit = patch_size * pool`` (at least one unit), after
    scaling the image down (never up) so that the longer side is at most ``max_side`` pixels and the patch
    count ``(H / patch) * (W / patch)`` is at most ``max_tokens``. The aspect ratio is kept as closely as the
    rounding allows. ``pool`` makes the patch grid divisible by a projector's pooling ratio.
    """
    for name, value in (("width", width), ("height", height), ("patch_size", patch_size), ("pool", pool)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    unit = patch_size * pool
    if max_side is not None and max_side < unit:
        raise ValueError(f"max_side={max_side} is smaller than one {unit}-pixel unit (patch_size * pool)")
    if max_tokens is not None and max_tokens < pool * pool:
        raise ValueError(f"max_tokens={max_tokens} is fewer than one {pool}x{pool} pooled cell of patches")

    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if max_tokens is not None:
        scale = min(scale, math.sqrt(max_tokens * patch_size * patch_size / (width * height)))

    def size_at(s: float) -> tuple[int, int]:
        return max(1, round(width * s / unit)) * unit, max(1, round(height * s / unit)) * unit

    def too_big(w: int, h: int) -> bool:
        return (max_side is not None and max(w, h) > max_side) or (
            max_tokens is not None and (w // patch_size) * (h // patch_size) > max_tokens
        )

    w, h = size_at(scale)
    while too_big(w, h):  # rounding up overshot a limit: shrink a little until both hold
        scale *= 0.99
        w, h = size_at(scale)
    return w, h


def native_resolution_image(
    image: ImageLike,
    patch_size: int = 14,
    *,
    max_side: int | None = None,
    max_tokens: int | None = None,
    pool: int = 1,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> torch.Tensor:
    """One image at about its own resolution, no tiling: float32 ``(3, H, W)``.

    ``H`` and ``W`` are multiples of ``patch_size * pool`` chosen by ``native_resolution_size`` (limits:
    ``max_side`` pixels on the longer side, ``max_tokens`` patches); resampling is bicubic.
    The vision tower accepts the result directly (its position embedding is resized to the grid).
    """
    img = as_rgb_image(image)
    w, h = native_resolution_size(
        img.width, img.height, patch_size, max_side=max_side, max_tokens=max_tokens, pool=pool
    )
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    return to_normalized_tensor(img, mean, std)


# --- features back together ------------------------------------------------------------------------------


def stitch_tiles(tile_features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Reassemble per-tile patch features into one feature map of the whole image.

    Args:
        tile_features: either tokens ``(T, h*w, C)`` (CLS already dropped, square ``h == w`` per tile) or
            maps ``(T, C, h, w)``. ``T`` is ``grid_w * grid_h``, or one more when the thumbnail is still
            first (it is then dropped), e.g. the vision tower's output on ``tile_image``'s tiles.
        grid: ``(grid_w, grid_h)`` as returned by ``tile_grid`` / ``tile_image``.

    Returns:
        ``(C, grid_h * h, grid_w * w)``: tile ``(row r, column c)`` at rows ``r*h : (r+1)*h`` and columns
        ``c*w : (c+1)*w`` (the same NCHW layout as ``VisionTransformer.forward_intermediates``).
    """
    if not isinstance(tile_features, torch.Tensor):
        raise TypeError(f"tile_features must be a tensor, got {type(tile_features).__name__}")
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (grid_w, grid_h) with positive entries, got {grid!r}")
    gw, gh = int(grid[0]), int(grid[1])
    if tile_features.ndim == 3:
        t, n, c = tile_features.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"tile_features tokens per tile ({n}) are not a square grid; pass maps (T, C, h, w) instead"
            )
        maps = tile_features.transpose(1, 2).reshape(t, c, side, side)
    elif tile_features.ndim == 4:
        maps = tile_features
    else:
        raise ValueError(
            f"tile_features must be (T, h*w, C) tokens or (T, C, h, w) maps, got shape {tuple(tile_features.shape)}"
        )
    t, c, h, w = maps.shape
    if t == gw * gh + 1:
        maps = maps[1:]  # the thumbnail
    elif t != gw * gh:
        raise ValueError(
            f"tile_features has {t} tiles but grid {gw}x{gh} needs {gw * gh} (or {gw * gh + 1} with the thumbnail)"
        )
    # (gh, gw, C, h, w) -> (C, gh, h, gw, w) -> (C, gh*h, gw*w)
    return maps.reshape(gh, gw, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, gh * h, gw * w)
