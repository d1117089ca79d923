"""Point correspondences between two images from patch features: mutual nearest neighbours.

Features are L2-normalised; patch ``i`` of image 1 and patch ``j`` of image 2 match when ``j`` is ``i``'s
most similar patch and ``i`` is ``j``'s (mutual nearest neighbours). Matches are ranked by cosine
similarity and the ``topk`` best are kept. Points are patch centres in each original image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..embedding.encoders import vision_tower
from . import render
from .features import ImageInput, grid_features, preprocess
from .similarity import patch_center


@dataclass(frozen=True)
class Matches:
    """Correspondences, best first. ``points1``/``points2``: ``(K, 2)`` pixel ``(x, y)`` in each original
    image; ``patches1``/``patches2``: ``(K, 2)`` patch ``(row, col)``; ``scores``: ``(K,)`` cosine."""

    points1: np.ndarray
    points2: np.ndarray
    patches1: np.ndarray
    patches2: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def mutual_nearest_neighbors(
    features1: torch.Tensor, features2: torch.Tensor, *, topk: int | None = None, mutual: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match patches of ``features1 (H1, W1, C)`` to ``features2 (H2, W2, C)``.

    Returns flat patch indices ``idx1 (K,)``, ``idx2 (K,)`` (row-major) and cosine ``scores (K,)``, sorted
    by score, best first; at most ``topk``. ``mutual=False`` keeps every patch's nearest neighbour in
    image 2 (one-way matching).
    """
    if features1.ndim != 3 or features2.ndim != 3 or features1.shape[-1] != features2.shape[-1]:
        raise ValueError(
            "features must be (H1, W1, C) and (H2, W2, C) with the same C, got "
            f"{tuple(features1.shape)} and {tuple(features2.shape)}"
        )
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be positive, got {topk}")
    a = F.normalize(features1.reshape(-1, features1.shape[-1]).float(), dim=-1)
    b = F.normalize(features2.reshape(-1, features2.shape[-1]).float().to(a.device), dim=-1)
    sim = a @ b.T  # (N1, N2)
    best12 = sim.argmax(dim=1)
    idx1 = torch.arange(a.shape[0], device=sim.device)
    if mutual:
        best21 = sim.argmax(dim=0)
        idx1 = idx1[best21[best12] == idx1]
    idx2 = best12[idx1]
    scores = sim[idx1, idx2]
    order = scores.argsort(descending=True)[:topk]
    return idx1[order].cpu(), idx2[order].cpu(), scores[order].cpu()


@torch.no_grad()
def match_images(
    model: torch.nn.Module,
    image1: ImageInput,
    image2: ImageInput,
    *,
    layer: int = -1,
    image_size: int | Sequence[int] | None = None,
    norm: bool = False,
    topk: int | None = 50,
    mutual: bool = True,
) -> Matches:
    """Correspondences between two images from their patch features at ``layer`` (see the module doc)."""
    visual = vision_tower(model)
    pix1, pil1 = preprocess(visual, image1, image_size)
    pix2, pil2 = preprocess(visual, image2, image_size)
    f1 = grid_features(visual, pix1, layer=layer, norm=norm)[0]
    f2 = grid_features(visual, pix2, layer=layer, norm=norm)[0]
    idx1, idx2, scores = mutual_nearest_neighbors(f1, f2, topk=topk, mutual=mutual)
    (h1, w1), (h2, w2) = f1.shape[:2], f2.shape[:2]
    rc1 = np.stack([idx1.numpy() // w1, idx1.numpy() % w1], axis=1)
    rc2 = np.stack([idx2.numpy() // w2, idx2.numpy() % w2], axis=1)
    p1 = np.stack(patch_center(rc1[:, 0], rc1[:, 1], pil1.size, (h1, w1)), axis=1)
    p2 = np.stack(patch_center(rc2[:, 0], rc2[:, 1], pil2.size, (h2, w2)), axis=1)
    return Matches(p1, p2, rc1, rc2, scores.numpy())


def correspondence_figure(
    image1: Image.Image, image2: Image.Image, matches: Matches, **kwargs
) -> Image.Image:
    """Both images side by side (same height) with a coloured line per match (``render.draw_matches``)."""
    return render.draw_matches(image1, image2, matches.points1, matches.points2, **kwargs)
