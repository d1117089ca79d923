"""Evaluation helpers on top of ``perception_encoder.embedding``: text embedding and CLIP checks.

File embedding (bad files reported and skipped, results independent of the batch size) lives in
``perception_encoder.embedding`` and is re-exported here for the evaluators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..embedding import (  # noqa: F401  (re-exported for the evaluators)
    Embedded,
    FeatureSpec,
    ImageLoader,
    Skipped,
    VideoLoader,
    embed_files,
    feature_encoder,
    model_device,
    vision_tower,
)


def embed_images(
    model: torch.nn.Module,
    paths: Sequence,
    transform: Callable | None,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = False,
):
    """Pooled image embeddings of ``paths`` through ``model.encode_image`` (bad files skipped and reported);
    ``transform`` defaults to the model's native-size reference preprocessing."""
    if transform is None:
        from ..transforms import image_transform

        transform = image_transform(vision_tower(model).config.image_size)
    return embed_files(
        paths,
        ImageLoader(transform),
        model.encode_image,
        batch_size=batch_size,
        device=model_device(model),
        num_workers=num_workers,
        progress=progress,
        desc="images",
    )


#: Text prompts are encoded in batches of this size whatever the image batch size, so the text side of
#: every metric is the same for any ``batch_size``.
TEXT_BATCH_SIZE = 256


def require_clip(model: torch.nn.Module, task: str) -> None:
    """Raise a clear error when ``model`` has no text tower."""
    if not (hasattr(model, "encode_text") and hasattr(model, "encode_image")):
        raise TypeError(
            f"{task} needs a CLIP model with a text tower (PE-Core); got {type(model).__name__}, "
            "a vision-only model (PE-Lang / PE-Spatial can be evaluated with linear-probe or knn)"
        )


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    texts: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    batch_size: int = TEXT_BATCH_SIZE,
) -> torch.Tensor:
    """Normalised text embeddings ``(T, D)`` (float32, CPU); ``tokenizer`` defaults to the CLIP tokenizer."""
    if tokenizer is None:
        from ..tokenization import tokenizer as make_tokenizer

        tokenizer = make_tokenizer(model.text.context_length)
    device = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size])).to(device)
        out.append(model.encode_text(ids, normalize=True).float().cpu())
    if not out:
        return torch.empty(0, model.embed_dim)
    return torch.cat(out)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
