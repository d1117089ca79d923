"""Metric functions on score matrices: top-k accuracy, mean per-class recall, retrieval recall@k.

Every metric here is a pure function of a score matrix, so it can be checked on hand-made numbers.

Ties: a candidate's rank is its position in a **stable** descending sort of the row, i.e. the number of
candidates with a strictly higher score plus the number of equal-scored candidates with a lower index.
This is what ``argmax`` does for top-1 (the first maximum wins), it makes every metric deterministic, and a
model that gives every candidate the same score is not rewarded (only index 0 is "ranked first").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def _check_scores(scores: torch.Tensor, what: str = "scores") -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, C), got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"{what} must have shape (N, C), got {tuple(scores.shape)}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(f"{what} contain NaN; the embeddings are not finite")


def best_positive_rank(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best-ranked positive under the stable tie rule (see the module doc).

    Args:
        scores: ``(Q, K)`` similarity of each query to each candidate (higher is better).
        positives: ``(Q, K)`` bool, True where the candidate is a correct answer for the query. Every row
            needs at least one positive.

    Returns:
        ``(Q,)`` int64 ranks; a query is a hit at ``k`` when its rank is ``< k``.
    """
    _check_scores(scores)
    if positives.shape != scores.shape:
        raise ValueError(
            f"positives must have the shape of scores {tuple(scores.shape)}, got {tuple(positives.shape)}"
        )
    positives = positives.to(device=scores.device, dtype=torch.bool)
    empty = ~positives.any(dim=1)
    if empty.any():
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"query {row} has no positive candidate; every query needs at least one")
    # The best positive is the highest-scored one; among equal scores the lowest index (it sorts first).
    lowest = torch.finfo(scores.dtype).min if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    best_score = scores.masked_fill(~positives, lowest).max(dim=1, keepdim=True).values
    at_best = positives & (scores == best_score)
    best_index = at_best.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    index = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    higher = (scores > best_score).sum(dim=1)
    tied_before = ((scores == best_score) & (index < best_index)).sum(dim=1)
    return higher + tied_before


def target_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of the target class in each row of ``scores`` ``(N, C)``; ``targets`` ``(N,)`` ints."""
    _check_scores(scores)
    targets = torch.as_tensor(targets, device=scores.device).long()
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have shape ({scores.shape[0]},), got {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must be class indices in [0, {scores.shape[1]}), got {targets.tolist()}")
    positives = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    positives[torch.arange(scores.shape[0], device=scores.device), targets] = True
    return best_positive_rank(scores, positives)


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """Top-1 class per row ``(N,)``: the first maximum of each row of ``(N, C)`` scores."""
    _check_scores(scores)
    return scores.argmax(dim=1)


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float | None:
    """Fraction of rows whose target is among the ``k`` best-scored classes.

    ``scores`` ``(N, C)``, ``targets`` ``(N,)``. Returns ``None`` (undefined) when there are fewer than
    ``k`` classes, as top-5 is not reported for datasets with fewer than 5 classes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_scores(scores)
    if scores.shape[1] < k:
        return None
    if scores.shape[0] == 0:
        return None
    return (target_rank(scores, targets) < k).double().mean().item()


def mean_per_class_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float | None:
    """Mean over the classes present in ``targets`` of the fraction of their samples predicted correctly.

    ``preds`` and ``targets`` are ``(N,)`` class indices. Classes with no sample are left out of the mean
    (their recall is undefined), like scikit-learn's ``balanced_accuracy_score``. ``None`` when ``N == 0``.
    """
    preds = torch.as_tensor(preds).long().cpu()
    targets = torch.as_tensor(targets).long().cpu()
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
    if targets.numel() == 0:
        return None
    support = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets[preds == targets], minlength=num_classes).double()
    present = support > 0
    return (hits[present] / support[present]).mean().item()


def per_class_recall(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> list[tuple[int, int, float]]:
    """``(class index, samples, recall)`` for every class present in ``targets``, in class order."""
    preds = torch.as_tensor(preds).long().cpu()
    targets = torch.as_tensor(targets).long().cpu()
    support = torch.bincount(targets, minlength=num_classes)
    hits = torch.bincount(targets[preds == targets], minlength=num_classes)
    return [
        (c, int(support[c]), hits[c].item() / support[c].item()) for c in range(num_classes) if support[c] > 0
    ]


def classification_metrics(
    scores: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)
) -> dict[str, float | None]:
    """``top{k}`` for each k (``None`` when there are fewer than k classes) and ``mean_per_class_recall``."""
    _check_scores(scores)
    targets = torch.as_tensor(targets, device=scores.device).long()
    out: dict[str, float | None] = {f"top{k}": topk_accuracy(scores, targets, k) for k in ks}
    out["mean_per_class_recall"] = mean_per_class_recall(predictions(scores), targets, scores.shape[1])
    return out


def retrieval_recall(
    scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float | None]:
    """Recall@k for each k: the fraction of queries with at least one positive among the top k.

    Args:
        scores: ``(Q, K)`` query-candidate similarities, plain (not reweighted).
        positives: ``(Q, K)`` bool; a query may have several positives.
        ks: the cut-offs. A cut-off larger than the number of candidates is ``None`` (every query would
            trivially be a hit).
    """
    ranks = best_positive_rank(scores, positives)
    return recall_at_k(ranks, scores.shape[1], ks)


def recall_at_k(
    ranks: torch.Tensor, num_candidates: int, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float | None]:
    """Recall@k from best-positive ranks ``(Q,)`` (see :func:`best_positive_rank`)."""
    out: dict[int, float | None] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k > num_candidates or ranks.numel() == 0:
            out[k] = None
        else:
            out[k] = (ranks < k).double().mean().item()
    return out
