"""Dense (per-patch) feature tools: feature maps, PCA pictures, similarity heatmaps, correspondences and
mask propagation through video.

Every tool works on the patch grid of a vision tower (a ``VisionTransformer`` or a ``CLIP`` model's
``.visual``). Feature maps are ``(H', W', C)`` tensors, rows and columns of patches; pictures are Pillow
images, so nothing beyond the core install is needed.
"""

from __future__ import annotations

from ..embedding.encoders import vision_tower
from .correspondence import Matches, correspondence_figure, match_images, mutual_nearest_neighbors
from .features import load_features, patch_features, save_features
from .pca import foreground_mask, pca_figure, pca_rgb
from .propagation import iter_propagate_masks, propagate_labels, propagate_masks
from .similarity import (
    clip_patch_embeddings,
    point_similarity,
    similarity_figure,
    text_similarity,
)

__all__ = [
    "Matches",
    "clip_patch_embeddings",
    "correspondence_figure",
    "foreground_mask",
    "iter_propagate_masks",
    "load_features",
    "match_images",
    "mutual_nearest_neighbors",
    "patch_features",
    "pca_figure",
    "pca_rgb",
    "point_similarity",
    "propagate_labels",
    "propagate_masks",
    "save_features",
    "similarity_figure",
    "text_similarity",
    "vision_tower",
]
