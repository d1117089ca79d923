"""Similarity heatmaps on the patch grid: from a chosen point, or from a text prompt (PE-Core CLIP).

Point: the patch under pixel ``(x, y)`` of the original image is the query; the map is the cosine
similarity of every patch's feature (at ``layer``) with it.

Text: CLIP embeds whole images, not patches, so patch tokens must be carried into the joint image-text
space by an approximation (the "dense CLIP" idea). Ours, ``mode="pool_values"`` (default): last block ->
``ln_post`` -> for each token, the attention-pooling head as if its probe attended to that token alone
(value projection, output projection, then the pooler's residual ``x + mlp(layernorm(x))``) -> ``@ proj``.
When the pooler's attention is concentrated on one token this is exactly the pooled embedding, so it is
the closest per-token reading of the head; it is still an approximation (the trained pooler mixes all
tokens). ``mode="linear"`` is the plainer ``ln_post(x) @ proj`` (skips the pooler). The heatmap is the
cosine similarity of each projected patch with the text embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..embedding.encoders import vision_tower
from . import render
from .features import ImageInput, grid_features, preprocess

DenseMode = Literal["pool_values", "linear"]


def pixel_to_patch(
    xy: tuple[float, float], image_size: tuple[int, int], grid: tuple[int, int]
) -> tuple[int, int]:
    """Pixel ``(x, y)`` of an image of ``image_size = (width, height)`` -> patch ``(row, col)`` of a
    ``grid = (rows, cols)`` covering the (squash-resized) image."""
    x, y = xy
    w, h = image_size
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point ({x}, {y}) is outside the {w}x{h} image")
    rows, cols = grid
    return min(int(y * rows / h), rows - 1), min(int(x * cols / w), cols - 1)


def patch_center(
    row: int | np.ndarray, col: int | np.ndarray, image_size: tuple[int, int], grid: tuple[int, int]
) -> tuple:
    """Centre ``(x, y)`` in original-image pixels of patch ``(row, col)`` (arrays welcome)."""
    w, h = image_size
    rows, cols = grid
    return (np.asarray(col) + 0.5) * w / cols, (np.asarray(row) + 0.5) * h / rows


def cosine_map(features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch ``features (H', W', C)`` with ``query (C,)`` -> ``(H', W')``."""
    return F.normalize(features.float(), dim=-1) @ F.normalize(query.float().to(features.device), dim=0)


@torch.no_grad()
def point_similarity(
    model: torch.nn.Module,
    image: ImageInput,
    point: tuple[float, float],
    *,
    layer: int = -1,
    image_size: int | Sequence[int] | None = None,
    norm: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cosine-similarity map ``(H', W')`` (values in [-1, 1], CPU) of every patch with the patch under
    ``point = (x, y)`` (pixels of the original image), and that patch's ``(row, col)``."""
    visual = vision_tower(model)
    pixels, pil = preprocess(visual, image, image_size)
    feats = grid_features(visual, pixels, layer=layer, norm=norm)[0]
    row, col = pixel_to_patch(point, pil.size, tuple(feats.shape[:2]))
    return cosine_map(feats, feats[row, col]).cpu(), (row, col)


@torch.no_grad()
def clip_patch_embeddings(
    model: torch.nn.Module, pixels: torch.Tensor, *, mode: DenseMode = "pool_values"
) -> torch.Tensor:
    """Normalised pixels ``(B, 3, H, W)`` -> per-patch embeddings in the joint space ``(B, H', W', D)``
    (float32, not normalised). See the module docstring for what ``mode`` does; it is an approximation."""
    visual = vision_tower(model)
    if getattr(visual.config, "output_dim", None) is None or not hasattr(visual, "proj"):
        raise TypeError(
            "text heatmaps need a PE-Core CLIP model (a vision tower with a projection to the text "
            "space); PE-Lang / PE-Spatial towers have none"
        )
    if mode not in ("pool_values", "linear"):
        raise ValueError(f"mode must be 'pool_values' or 'linear', got {mode!r}")
    grid = visual.grid_shape(*pixels.shape[-2:])
    x = visual.forward_features(pixels, layer=-1, norm=True)[:, visual.num_prefix_tokens :]
    pool = getattr(visual, "attn_pool", None)
    if mode == "pool_values" and pool is not None:
        width = visual.width
        # the value slice of the fused in-projection (q, k, v stacked in that order)
        v = F.linear(x, pool.attn.in_proj_weight[2 * width :], pool.attn.in_proj_bias[2 * width :])
        x = pool.attn.out_proj(v)
        x = x + pool.mlp(pool.layernorm(x))
    x = x @ visual.proj
    return x.reshape(x.shape[0], *grid, -1).float()


@torch.no_grad()
def text_similarity(
    model: torch.nn.Module,
    image: ImageInput,
    text: str | torch.Tensor,
    *,
    tokenizer=None,
    image_size: int | Sequence[int] | None = None,
    mode: DenseMode = "pool_values",
) -> torch.Tensor:
    """Cosine similarity ``(H', W')`` (CPU) of each patch, projected into the joint space
    (``clip_patch_embeddings``), with the embedding of ``text`` (a prompt or token ids ``(1, L)``).

    ``model`` must be a CLIP model (``encode_text``). ``tokenizer`` defaults to the CLIP tokenizer at
    the model's context length.
    """
    if not hasattr(model, "encode_text"):
        raise TypeError("text heatmaps need a CLIP model with a text tower (PE-Core), not a vision tower")
    visual = vision_tower(model)
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("the text prompt is empty")
        if tokenizer is None:
            from ..tokenization import tokenizer as make_tokenizer

            tokenizer = make_tokenizer(model.text.context_length)
        ids = tokenizer([text])
    else:
        ids = text if text.ndim == 2 else text[None]
    device = next(model.parameters()).device
    txt = model.encode_text(ids.to(device), normalize=True)[0]
    pixels, _ = preprocess(visual, image, image_size)
    patches = clip_patch_embeddings(model, pixels, mode=mode)[0]
    return cosine_map(patches, txt).cpu()


def similarity_figure(
    image: Image.Image,
    similarity: torch.Tensor | np.ndarray,
    *,
    point: tuple[float, float] | None = None,
    alpha: float = 0.55,
    gap: int = 8,
) -> Image.Image:
    """The image (with a marker at ``point``) next to the heatmap blended over it.

    The map ``(H', W')`` is min-max rescaled for display, so colours show the ranking within this image,
    not absolute similarity.
    """
    left = render.draw_marker(image, point) if point is not None else image.convert("RGB")
    right = render.overlay(image, render.rescale(similarity), alpha=alpha)
    if point is not None:
        right = render.draw_marker(right, point)
    return render.side_by_side([left, right], gap=gap)
