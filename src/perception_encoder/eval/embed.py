"""Evaluation's use of the embedding pipeline (``perception_encoder.embedding``): the images or videos of a
dataset -> features, bad files reported and skipped, results independent of the batch size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..embedding import (
    Embedded,
    FeatureSpec,
    ImageLoader,
    VideoLoader,
    embed_files,
    feature_encoder,
    stack_images,
    video_encoder,
    vision_tower,
)
from ..embedding.text import TEXT_BATCH_SIZE, embed_texts  # noqa: F401  (used by the evaluators)


def default_transform(model: torch.nn.Module) -> Callable:
    """The reference preprocessing at the model's native size."""
    from ..transforms import image_transform

    return image_transform(vision_tower(model).config.image_size)


def embed_images(
    model: torch.nn.Module,
    paths: Sequence,
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    *,
    features: FeatureSpec = FeatureSpec(),
    desc: str = "images",
) -> Embedded:
    """``features`` of the images at ``paths`` (default: the pooled embedding, ``model.encode_image``);
    ``transform`` defaults to the model's native-size reference preprocessing."""
    return embed_files(
        paths,
        ImageLoader(transform or default_transform(model)),
        stack_images(feature_encoder(model, features)),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc=desc,
    )


def embed_videos(
    model: torch.nn.Module,
    paths: Sequence,
    num_frames: int,
    transform: Callable | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
) -> Embedded:
    """Video embeddings: ``clip.pool_frames`` of the normalised embeddings of up to ``num_frames`` frames
    per video (``CLIP.encode_video(normalize=True)``, SPEC §10). ``batch_size`` counts videos."""
    return embed_files(
        paths,
        VideoLoader(transform or default_transform(model), num_frames),
        video_encoder(feature_encoder(model), normalize_frames=True, batch_size=batch_size * num_frames),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc="videos",
    )


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
