"""Frozen-feature probes: logistic regression (linear probe) and cosine k-NN on a train/test split.

Features come from any layer (:class:`.embed.FeatureSpec`): the pooled embedding by default, or the mean
of the patch tokens / the CLS token after block k. Metrics are those of zero-shot classification.

* Linear probe: features standardised with the training set's mean and std, then multinomial logistic
  regression (scikit-learn, L-BFGS). With several ``C`` values, the best one on a fixed stratified 20% of
  the training set is chosen and the probe refitted on all of it. scikit-learn is the optional extra
  ``eval`` and is imported only here.
* k-NN: cosine similarity to the training features; the k nearest (ties: lower training index first) vote
  for their class with weight ``exp(similarity / temperature)``; classes are scored by their summed votes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..embedding import FeatureSpec, feature_encoder
from .data import LabeledFiles
from .embed import embed_images, normalized
from .metrics import classification_metrics, predictions
from .report import base_result, per_class_table


def require_sklearn():
    try:
        import sklearn  # noqa: F401
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            "the linear probe needs scikit-learn: pip install 'perception-encoder[eval]' "
            "(or pip install scikit-learn)"
        ) from None
    return LogisticRegression, train_test_split


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-12] = 1.0  # a constant feature carries nothing; avoid dividing by zero
    return [(x - mean) / std for x in (train, *others)]


class ProbeFit(NamedTuple):
    """What :func:`linear_probe_scores` returns."""

    scores: torch.Tensor  # (M, num_classes) log-probabilities
    c: float
    converged: bool


def linear_probe_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    *,
    c: float | Sequence[float] = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeFit:
    """Fit logistic regression on ``train_x`` ``(N, D)`` / ``train_y`` ``(N,)`` and score ``test_x``.

    Returns a :class:`ProbeFit`: class log-probabilities ``(M, num_classes)`` (``-inf`` for classes absent
    from the training set), the inverse regularisation strength ``C`` used (with several values, the best on
    a fixed 20% of the training set; the first value when that part is too small to hold two classes), and
    whether L-BFGS converged within ``max_iter`` iterations.
    """
    LogisticRegression, train_test_split = require_sklearn()
    xtr = train_x.double().numpy()
    ytr = torch.as_tensor(train_y).long().numpy()
    xte = test_x.double().numpy()
    if len(np.unique(ytr)) < 2:
        raise ValueError("the linear probe needs training images of at least 2 classes")
    cs = [float(c)] if isinstance(c, (int, float)) else [float(v) for v in c]
    if not cs or any(v <= 0 for v in cs):
        raise ValueError(f"C values must be positive, got {cs}")

    def fit(x: np.ndarray, y: np.ndarray, value: float):
        # non-convergence is reported in the result rather than as a warning per fit
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            return LogisticRegression(C=value, max_iter=max_iter, tol=1e-6).fit(x, y)

    best = cs[0]
    if len(cs) > 1:
        counts = np.bincount(ytr)
        classes = int((counts > 0).sum())
        n_val = max(1, round(0.2 * len(ytr)))
        # stratify when every class can appear on both sides; tiny training sets are split plainly
        ok = counts[counts > 0].min() >= 2 and classes <= n_val <= len(ytr) - classes
        xa, xb, ya, yb = train_test_split(
            xtr, ytr, test_size=n_val, random_state=seed, stratify=ytr if ok else None
        )
        if len(np.unique(ya)) >= 2:
            xa, xb = _standardize(xa, xb)
            accs = [(fit(xa, ya, v).predict(xb) == yb).mean() for v in cs]
            best = cs[int(np.argmax(accs))]  # the first of equally good values
    xtr_s, xte_s = _standardize(xtr, xte)
    clf = fit(xtr_s, ytr, best)
    with np.errstate(divide="ignore"):
        logp = clf.predict_log_proba(xte_s)
    scores = torch.full((xte.shape[0], num_classes), float("-inf"), dtype=torch.float64)
    scores[:, torch.as_tensor(clf.classes_).long()] = torch.from_numpy(logp)
    return ProbeFit(scores, best, bool(np.max(clf.n_iter_) < max_iter))


def knn_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted k-NN class scores ``(M, num_classes)`` for ``test_x`` ``(M, D)`` against ``train_x`` ``(N, D)``.

    Cosine similarity; the ``min(k, N)`` nearest training samples (stable: ties go to the lower index)
    each add ``exp(similarity / temperature)`` to their class.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    train = normalized(train_x)
    test = normalized(test_x)
    labels = torch.as_tensor(train_y).long()
    if labels.shape != (train.shape[0],):
        raise ValueError(f"train_y must have shape ({train.shape[0]},), got {tuple(labels.shape)}")
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], _rows_per_chunk(train.shape[0])):
        sims = test[start : start + _rows_per_chunk(train.shape[0])] @ train.T
        top, idx = nearest(sims, k)
        votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[idx], torch.exp(top.double() / temperature))
        out.append(votes)
    return torch.cat(out) if out else torch.empty(0, num_classes, dtype=torch.float64)


def _rows_per_chunk(columns: int) -> int:
    # about 2**26 similarities (256 MB in float32) at a time, whatever the size of the training set
    return max(1, min(1024, 2**26 // max(1, columns)))


def nearest(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``sims`` ``(R, N)``, ties going to the lower index (as a
    stable descending sort would pick them), without sorting whole rows: values and indices ``(R, k)``."""
    threshold = sims.topk(k, dim=1).values[:, -1:]
    greater = sims > threshold
    room = k - greater.sum(dim=1, keepdim=True)
    equal = sims == threshold
    take = greater | (equal & (equal.cumsum(dim=1) <= room))
    idx = take.nonzero()[:, 1].view(-1, k)  # row-major, so each row's k columns in index order
    vals = sims.gather(1, idx)
    order = vals.sort(dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def _probe(
    task: str,
    model: torch.nn.Module,
    train: LabeledFiles,
    test: LabeledFiles,
    features: FeatureSpec,
    transform: Callable | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    classify: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, dict[str, Any]], torch.Tensor],
) -> dict[str, Any]:
    if train.classnames != test.classnames:
        raise ValueError("train and test splits must share one class list (use data.split_folders)")
    feature_encoder(model, features)  # checks the layer before any file is read
    loader = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "progress": progress,
        "features": features,
    }
    tr = embed_images(model, train.paths, transform, desc="train", **loader)
    te = embed_images(model, test.paths, transform, desc="test", **loader)
    result = base_result(task, test.source, len(test), te.skipped)
    result.update(
        num_classes=len(train.classnames),
        features=features.describe(),
        num_train=len(train),
        num_train_evaluated=len(tr.index),
        num_train_skipped=len(tr.skipped),
        train_skipped=[{"path": s.path, "reason": s.reason} for s in tr.skipped],
    )
    if train.source:
        result["data"] = str(Path(train.source).parent)
    if not tr.index or not te.index:
        result["metrics"] = {"top1": None, "top5": None, "mean_per_class_recall": None}
        return result
    train_y = torch.tensor([train.labels[i] for i in tr.index])
    test_y = torch.tensor([test.labels[i] for i in te.index])
    scores = classify(tr.values, train_y, te.values, len(train.classnames), result)
    result["metrics"] = classification_metrics(scores, test_y)
    result["per_class"] = per_class_table(train.classnames, predictions(scores), test_y)
    return result


def evaluate_linear_probe(
    model: torch.nn.Module,
    train: LabeledFiles,
    test: LabeledFiles,
    *,
    features: FeatureSpec = FeatureSpec(),
    c: float | Sequence[float] = 1.0,
    max_iter: int = 1000,
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Linear-probe accuracy on frozen features: fit on ``train``, score ``test`` (see the module doc).

    ``model`` may be a CLIP model or a vision tower. Returns the result dict (:mod:`.report`) with
    ``top1``, ``top5``, ``mean_per_class_recall``; ``c`` holds the chosen C.
    """

    def classify(xtr, ytr, xte, n, result):
        fit = linear_probe_scores(xtr, ytr, xte, n, c=c, max_iter=max_iter)
        result["c"] = fit.c
        result["converged"] = fit.converged
        if not fit.converged:
            result.setdefault("notes", []).append(
                f"logistic regression stopped at max_iter={max_iter} before converging; raise --max-iter"
            )
        return fit.scores

    return _probe(
        "linear_probe", model, train, test, features, transform, batch_size, num_workers, progress, classify
    )


def evaluate_knn(
    model: torch.nn.Module,
    train: LabeledFiles,
    test: LabeledFiles,
    *,
    k: int = 20,
    temperature: float = 0.07,
    features: FeatureSpec = FeatureSpec(),
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Weighted cosine k-NN accuracy on frozen features (see the module doc and :func:`knn_scores`)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def classify(xtr, ytr, xte, n, result):
        result["k"] = min(k, xtr.shape[0])
        result["temperature"] = temperature
        return knn_scores(xtr, ytr, xte, n, k=k, temperature=temperature)

    return _probe("knn", model, train, test, features, transform, batch_size, num_workers, progress, classify)
