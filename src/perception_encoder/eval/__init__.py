"""Evaluation harness: zero-shot classification, image/video-text retrieval, linear probe and k-NN.

Each task is a function ``evaluate_*(model, data, ...) -> dict`` (the result schema is in :mod:`.report`);
datasets are described by files (:mod:`.data`); metrics are pure functions of score matrices
(:mod:`.metrics`). The ``pe eval`` command wraps them.
"""

from __future__ import annotations

from ..embedding import FeatureSpec
from .data import (
    CaptionedFiles,
    LabeledFiles,
    captions_csv,
    class_folder,
    imagenet_classnames,
    imagenet_templates,
    labeled_csv,
    labeled_files,
    read_classnames,
    read_templates,
    split_folders,
)
from .metrics import (
    best_positive_rank,
    classification_metrics,
    mean_per_class_recall,
    retrieval_recall,
    topk_accuracy,
)
from .probe import evaluate_knn, evaluate_linear_probe, knn_scores, linear_probe_scores
from .report import metrics_rows, per_class_rows, to_json, write_json
from .retrieval import evaluate_retrieval, retrieval_metrics
from .video import evaluate_video_retrieval, evaluate_video_zeroshot
from .zeroshot import evaluate_zeroshot

__all__ = [
    "CaptionedFiles",
    "FeatureSpec",
    "LabeledFiles",
    "best_positive_rank",
    "captions_csv",
    "class_folder",
    "classification_metrics",
    "evaluate_knn",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "evaluate_video_retrieval",
    "evaluate_video_zeroshot",
    "evaluate_zeroshot",
    "imagenet_classnames",
    "imagenet_templates",
    "knn_scores",
    "labeled_csv",
    "labeled_files",
    "linear_probe_scores",
    "mean_per_class_recall",
    "read_classnames",
    "read_templates",
    "metrics_rows",
    "per_class_rows",
    "retrieval_metrics",
    "retrieval_recall",
    "split_folders",
    "to_json",
    "topk_accuracy",
    "write_json",
]
