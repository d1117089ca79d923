"""THE embedding pipeline: image and video files -> one embedding per file. ``pe embed`` and
``pe classify`` run it; evaluation uses its pieces (``embed_files``, the encoders).

Images go through the reference preprocessing at the model's size; videos give up to ``num_frames``
frames each, their frame features pooled by ``clip.pool_frames``. ``normalize=True`` L2-normalises each
output row (after the video pooling), so ``pe embed V --normalize`` equals
``normalize(CLIP.encode_video(frames, normalize=True))`` and ``pe embed V`` equals
``CLIP.encode_video(frames)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import HighBitDepth, image_transform
from ..video import check_num_frames, is_video_file
from .encoders import Encoder, FeatureSpec, as_encoder
from .files import ImageLoader, Skipped, check_batch_size, embed_files, stack_images
from .video import VideoLoader, video_encoder


@dataclass
class EmbeddingResult:
    """``embeddings[i]`` belongs to ``paths[i]``; ``skipped`` lists the files that could not be used and
    ``notes`` the distinct warnings raised while reading them (each once)."""

    embeddings: torch.Tensor  # (N, D) float32
    paths: list[Path]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class MediaLoader:
    """path -> pixels: ``(3, H, W)`` for an image, ``(n, 3, H, W)`` for a video (by its extension; up to
    ``num_frames`` frames, ``VideoLoader``). Picklable, for loader processes."""

    def __init__(self, transform: Any, num_frames: int = 8) -> None:
        self.images = ImageLoader(transform)
        self.videos = VideoLoader(transform, num_frames=num_frames)

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        return self.videos(Path(path)) if is_video_file(path) else self.images(path)


def media_encoder(
    pixels_to_features: Any, *, normalize: bool = False, batch_size: int = 64
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """The rows of a batch of media (``iter_embedded``'s ``encode``): images ``(3, H, W)`` stacked through
    ``pixels_to_features``, videos ``(n, 3, H, W)`` through ``video_encoder`` (frames pooled by
    ``clip.pool_frames``, each normalised first when ``normalize``), every row L2-normalised when
    ``normalize``. Images and videos may share a batch; rows come back in the batch's order."""
    images = stack_images(pixels_to_features)
    videos = video_encoder(pixels_to_features, normalize_frames=normalize, batch_size=batch_size)

    def encode(items: list[torch.Tensor]) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(items)
        for is_video, fn in ((False, images), (True, videos)):
            idx = [i for i, x in enumerate(items) if (x.ndim == 4) == is_video]
            if idx:
                for i, row in zip(idx, fn([items[i] for i in idx]), strict=True):
                    out[i] = row
        rows = torch.stack(out)
        return F.normalize(rows, dim=-1) if normalize else rows

    return encode


def embed_paths(
    model: nn.Module | Encoder,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    features: FeatureSpec = FeatureSpec(),
    num_frames: int = 8,
    normalize: bool = False,
    image_size: int | tuple[int, int] | None = None,
    high_bit_depth: HighBitDepth = "clip",
    num_workers: int = 0,
    progress: bool = False,
) -> EmbeddingResult:
    """Embed image and video files with a CLIP model, a vision tower, or any ``Encoder`` (an
    ``export.OnnxEncoder`` of an image graph).

    ``features``: the model's own embedding (default; token models: the mean of the output patch tokens),
    or block ``layer``'s patch-token mean or CLS token (``FeatureSpec``). Files are read in order,
    ``batch_size`` at a time (a video counts as one; its frames go through the model ``batch_size`` at a
    time). ``image_size``: the input size (default: the model's own). ``high_bit_depth``: how 16-bit and
    float images become 8-bit (``transforms.to_rgb``). Files that cannot be read are skipped
    (``result.skipped``), never fatal.
    """
    check_batch_size(batch_size)
    check_num_frames(num_frames, "num_frames (frames per video)")
    encoder = as_encoder(model)
    encode = encoder.features(features)  # checks the layer and the pooling before any file is read
    transform = image_transform(image_size or encoder.image_size, high_bit_depth=high_bit_depth)
    files = [Path(p) for p in paths]
    out = embed_files(
        files,
        MediaLoader(transform, num_frames),
        media_encoder(encode, normalize=normalize, batch_size=batch_size),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    if not out.index:
        return EmbeddingResult(torch.empty(0, 0), [], out.skipped, out.notes)
    return EmbeddingResult(out.values.float(), [files[i] for i in out.index], out.skipped, out.notes)
