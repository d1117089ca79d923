"""Zero-shot classification of a labelled image set (SPEC section 10).

Classifier: every template filled with every class name, encoded, normalised, averaged per class,
renormalised (``perception_encoder.zeroshot.zero_shot_classifier``). Logits: ``100 * normalised image
embedding @ classifier``. Metrics: top-1, top-5 (``None`` with fewer than 5 classes), mean per-class recall.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..embedding import require_clip
from ..zeroshot import zero_shot_classifier, zero_shot_logits
from .data import LabeledFiles, imagenet_templates
from .embed import (
    TEXT_BATCH_SIZE,
    Embedded,
    embed_images,
)
from .metrics import classification_metrics, predictions
from .report import base_result, per_class_table


def score_zeroshot(
    model: torch.nn.Module,
    data: LabeledFiles,
    embedded: Embedded,
    templates: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor] | None,
    task: str,
) -> dict[str, Any]:
    """Metrics for embeddings already computed (images or videos) against the class prompts."""
    result = base_result(task, data.source, len(data), embedded.skipped, data.notes)
    result.update(num_classes=len(data.classnames), num_templates=len(templates))
    if not embedded.index:
        result["metrics"] = {"top1": None, "top5": None, "mean_per_class_recall": None}
        return result
    classifier = zero_shot_classifier(
        model, data.classnames, templates, tokenizer, batch_size=TEXT_BATCH_SIZE
    )
    logits = zero_shot_logits(embedded.values, classifier.float().cpu())
    targets = torch.tensor([data.labels[i] for i in embedded.index])
    result["metrics"] = classification_metrics(logits, targets)
    result["per_class"] = per_class_table(data.classnames, predictions(logits), targets)
    return result


def evaluate_zeroshot(
    model: torch.nn.Module,
    data: LabeledFiles,
    *,
    templates: Sequence[str] | None = None,
    transform: Callable | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot accuracy of a CLIP ``model`` on ``data`` (see :mod:`.data` for the formats).

    Args:
        model: a CLIP model in eval mode, on the device to run on.
        data: the labelled images; ``data.classnames`` are filled into the templates.
        templates: prompt templates with one ``{}``; default: the 80 ImageNet templates.
        transform: image -> ``(3, H, W)``; default: the reference transform at the model's size.
        tokenizer: texts -> ids; default: the CLIP tokenizer at the model's context length.
        batch_size: images per forward pass (the metrics do not depend on it).

    Returns:
        The result dict (:mod:`.report`) with ``metrics`` ``top1``, ``top5``, ``mean_per_class_recall``;
        unreadable images are listed under ``skipped`` and left out of the metrics.
    """
    require_clip(model, "zero-shot classification")
    templates = list(templates) if templates is not None else imagenet_templates()
    embedded = embed_images(model, data.paths, transform, batch_size, num_workers, progress)
    return score_zeroshot(model, data, embedded, templates, tokenizer, task="zeroshot")
