"""Video zero-shot classification and video-text retrieval (SPEC sections 5 and 10).

A video is ``num_frames`` frames (8 by default) at indices ``int(i * (T - 1) / (N - 1))`` (the core
library's ``load_video``; a shorter video gives each of its frames once), each through the image
transform. Its embedding is ``clip.pool_frames`` of the frame embeddings, **each frame embedding normalised
before the mean** (``CLIP.encode_video(normalize=True)``);
the scores then use the normalised mean (cosine similarity). The same video embedding serves both tasks.
Unreadable videos are reported and skipped, like unreadable images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..embedding import require_clip
from .data import CaptionedFiles, LabeledFiles, imagenet_templates
from .embed import embed_videos
from .retrieval import DEFAULT_KS, score_retrieval
from .zeroshot import score_zeroshot

DEFAULT_NUM_FRAMES = 8


def evaluate_video_zeroshot(
    model: torch.nn.Module,
    data: LabeledFiles,
    *,
    templates: Sequence[str] | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
    transform: Callable | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot accuracy on labelled videos (a class folder of videos or a CSV); metrics as for images."""
    templates = list(templates) if templates is not None else imagenet_templates()
    require_clip(model, "video evaluation")
    embedded = embed_videos(model, data.paths, num_frames, transform, batch_size, num_workers, progress)
    result = score_zeroshot(model, data, embedded, templates, tokenizer, task="video_zeroshot")
    result["num_frames"] = num_frames
    return result


def evaluate_video_retrieval(
    model: torch.nn.Module,
    data: CaptionedFiles,
    *,
    num_frames: int = DEFAULT_NUM_FRAMES,
    transform: Callable | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Video-text retrieval recall@k both ways (keys ``video_to_text_recall@k``, ``text_to_video_recall@k``)."""
    require_clip(model, "video evaluation")
    embedded = embed_videos(model, data.paths, num_frames, transform, batch_size, num_workers, progress)
    result = score_retrieval(model, data, embedded, tokenizer, ks, task="video_retrieval")
    result["metrics"] = {
        k.replace("image_to_text", "video_to_text").replace("text_to_image", "text_to_video"): v
        for k, v in result["metrics"].items()
    }
    result["num_frames"] = num_frames
    return result
