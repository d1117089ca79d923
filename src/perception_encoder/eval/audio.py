"""Audio-text (and video-text, audio+video-text) retrieval with PE-AV models, from a captions CSV.

The files of ``path,caption`` rows are audio files or videos; each is embedded by the PE-AV pipeline
(``embedding.av``: its sound, its frames or both, by ``modality``) and each caption by the text head for
that modality. Scores are raw dot products, as the reference's PE-AV evaluation computes them (no
normalisation, no reweighting); recall@k both ways as for images (``eval.retrieval``). Files that cannot
be decoded are reported and skipped, their captions dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..embedding.av import embed_av_paths, embed_av_texts, file_modality, require_av_model, text_target
from .data import CaptionedFiles
from .report import base_result
from .retrieval import DEFAULT_KS, retrieval_metrics


def evaluate_av_retrieval(
    model: torch.nn.Module,
    data: CaptionedFiles,
    *,
    modality: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrieval recall@k of a PE-AV ``model`` on ``data``: keys ``<kind>_to_text_recall@k`` and
    ``text_to_<kind>_recall@k`` with ``<kind>`` the modality (``audio``, ``video``, ``audio_video``; by
    default audio for audio files and video for videos, so a CSV mixing both needs ``modality``)."""
    require_av_model(model, "audio and video retrieval")
    kinds = {file_modality(p, modality) for p in data.paths}
    if len(kinds) > 1:
        raise ValueError(
            "the CSV mixes audio files and videos: pass --modality audio (their sound) or another one for all"
        )
    kind = kinds.pop()
    embedded = embed_av_paths(
        model, data.paths, modality=kind, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    task = f"{kind.replace('-', '_')}_retrieval"
    result = base_result(task, data.source, len(data.paths), embedded.skipped, data.notes)
    # captions of files that failed to load have no positive left: drop them
    row = {str(p): j for j, p in enumerate(embedded.paths)}
    kept = [
        (c, row[str(data.paths[o])])
        for c, o in zip(data.captions, data.owners, strict=True)
        if str(data.paths[o]) in row
    ]
    result.update(num_captions=len(kept), num_captions_dropped=len(data.captions) - len(kept), modality=kind)
    name = kind.replace("-", "_")
    if not kept:
        result["metrics"] = {
            f"{d}_recall@{k}": None for d in (f"{name}_to_text", f"text_to_{name}") for k in ks
        }
        return result
    texts = embed_av_texts(model, [c for c, _ in kept], text_target(kind))
    metrics = retrieval_metrics(embedded.embeddings, texts, [o for _, o in kept], ks, cosine=False)
    result["metrics"] = {
        k.replace("image_to_text", f"{name}_to_text").replace("text_to_image", f"text_to_{name}"): v
        for k, v in metrics.items()
    }
    return result
