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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    or block ``layer``'s patch-token mean or CLS token (``FeatureSpec``). ``batch_size`` counts images; a
    batch of videos holds about ``batch_size`` frames. ``image_size``: the input size (default: the
    model's own). ``high_bit_depth``: how 16-bit and float images become 8-bit (``transforms.to_rgb``).
    Files that cannot be read are skipped (``result.skipped``), never fatal.
    """
    check_batch_size(batch_size)
    check_num_frames(num_frames, "num_frames (frames per video)")
    encoder = as_encoder(model)
    encode = encoder.features(features)  # checks the layer and the pooling before any file is read
    transform = image_transform(image_size or encoder.image_size, high_bit_depth=high_bit_depth)

    files = [Path(p) for p in paths]
    groups = {
        "image": [i for i, p in enumerate(files) if not is_video_file(p)],
        "video": [i for i, p in enumerate(files) if is_video_file(p)],
    }
    rows: dict[int, torch.Tensor] = {}
    skipped: list[Skipped] = []
    notes: list[str] = []
    for kind, idx in groups.items():
        if not idx:
            continue
        if kind == "image":
            load, fn, bs = ImageLoader(transform), stack_images(encode), batch_size
        else:
            load = VideoLoader(transform, num_frames=num_frames)
            fn = video_encoder(encode, normalize_frames=normalize, batch_size=batch_size)
            bs = max(1, batch_size // num_frames)
        out = embed_files(
            [files[i] for i in idx],
            load,
            fn,
            batch_size=bs,
            num_workers=num_workers,
            progress=progress,
            desc=f"embedding {kind}s",
        )
        skipped += out.skipped
        notes += [n for n in out.notes if n not in notes]
        for j, emb in zip(out.index, out.values, strict=True):
            rows[idx[j]] = emb
    order = sorted(rows)
    if not order:
        return EmbeddingResult(torch.empty(0, 0), [], skipped, notes)
    embs = torch.stack([rows[i] for i in order]).float()
    if normalize:
        embs = F.normalize(embs, dim=-1)
    return EmbeddingResult(embs, [files[i] for i in order], skipped, notes)
