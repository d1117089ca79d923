"""Image-text retrieval: recall@k both ways with plain cosine scores (SPEC section 10).

Image -> text: each image (with at least one caption) queries all captions; it is a hit at k when one of
its own captions is among the k best. Text -> image: each caption queries all images; its one positive is
the image it describes. Images without captions stay in the pool as distractors. Scores are plain cosine
similarities (the reference tool's reweighting is not applied: the plain numbers are the standard ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..embedding import require_clip
from .data import CaptionedFiles
from .embed import (
    Embedded,
    embed_images,
    embed_texts,
    normalized,
)
from .metrics import best_positive_rank, recall_at_k
from .report import base_result

DEFAULT_KS = (1, 5, 10)


def retrieval_ranks(
    queries: torch.Tensor, candidates: torch.Tensor, query_ids: torch.Tensor, candidate_ids: torch.Tensor
) -> torch.Tensor:
    """Best-positive rank of every query; candidate ``j`` is a positive of query ``i`` when their ids match.

    ``queries`` ``(Q, D)`` and ``candidates`` ``(K, D)`` are normalised embeddings; ``query_ids`` ``(Q,)``
    and ``candidate_ids`` ``(K,)`` are integer group ids. Scored in chunks of queries.
    """
    ranks = []
    # about 2**26 scores (256 MB in float32) at a time; the chunking does not change any rank
    rows = max(1, min(1024, 2**26 // max(1, candidates.shape[0])))
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows]
        scores = q @ candidates.T
        positives = query_ids[start : start + rows, None] == candidate_ids[None, :]
        ranks.append(best_positive_rank(scores, positives))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def retrieval_metrics(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    text_owner: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    cosine: bool = True,
) -> dict[str, float | None]:
    """Recall@k both ways for images ``(M, D)`` and texts ``(T, D)``; text ``j`` describes image
    ``text_owner[j]``. Keys: ``image_to_text_recall@k`` and ``text_to_image_recall@k``. Scores are cosine
    similarities, or with ``cosine=False`` raw dot products (PE-AV's reference evaluation scores so)."""
    img = normalized(image_embeddings) if cosine else image_embeddings.float()
    txt = normalized(text_embeddings) if cosine else text_embeddings.float()
    owner = torch.as_tensor(list(text_owner), dtype=torch.long)
    if owner.shape != (txt.shape[0],):
        raise ValueError(f"text_owner has {owner.numel()} entries for {txt.shape[0]} texts")
    if owner.numel() and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise ValueError(f"text_owner entries must index the {img.shape[0]} images")
    captioned = torch.unique(owner)  # only images with a caption can be queries
    i2t = retrieval_ranks(img[captioned], txt, captioned, owner)
    t2i = retrieval_ranks(txt, img, owner, torch.arange(img.shape[0]))
    out: dict[str, float | None] = {}
    for k, v in recall_at_k(i2t, txt.shape[0], ks).items():
        out[f"image_to_text_recall@{k}"] = v
    for k, v in recall_at_k(t2i, img.shape[0], ks).items():
        out[f"text_to_image_recall@{k}"] = v
    return out


def score_retrieval(
    model: torch.nn.Module,
    data: CaptionedFiles,
    embedded: Embedded,
    tokenizer: Callable[[list[str]], torch.Tensor] | None,
    ks: Sequence[int],
    task: str,
) -> dict[str, Any]:
    """Metrics for file embeddings already computed (images or videos) against ``data``'s captions."""
    result = base_result(task, data.source, len(data.paths), embedded.skipped, data.notes)
    # captions of files that failed to load have no positive left: drop them
    row = {file: j for j, file in enumerate(embedded.index)}
    kept = [(c, row[o]) for c, o in zip(data.captions, data.owners, strict=True) if o in row]
    result.update(num_captions=len(kept), num_captions_dropped=len(data.captions) - len(kept))
    if not kept:
        result["metrics"] = {f"{d}_recall@{k}": None for d in ("image_to_text", "text_to_image") for k in ks}
        return result
    texts = embed_texts(model, [c for c, _ in kept], tokenizer)
    result["metrics"] = retrieval_metrics(embedded.values, texts, [o for _, o in kept], ks)
    return result


def evaluate_retrieval(
    model: torch.nn.Module,
    data: CaptionedFiles,
    *,
    transform: Callable | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Image-text retrieval recall@k of a CLIP ``model`` on ``data`` (a captions CSV, see :mod:`.data`).

    Returns the result dict (:mod:`.report`): ``metrics`` holds ``image_to_text_recall@k`` and
    ``text_to_image_recall@k`` for each k (``None`` when k exceeds the candidates); unreadable images are
    listed under ``skipped`` and their captions dropped (``num_captions_dropped``).
    """
    require_clip(model, "image-text retrieval")
    embedded = embed_images(model, data.paths, transform, batch_size, num_workers, progress)
    return score_retrieval(model, data, embedded, tokenizer, ks, task="retrieval")
