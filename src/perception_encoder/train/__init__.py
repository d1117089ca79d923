"""Contrastive training and fine-tuning with PE's recipe (SPEC §9): ``train(config) -> TrainResult``.

Modules, one concept each: ``config`` (the run's settings), ``data`` (sources, order, collation),
``synthetic`` (the shapes generator), ``augment`` (crop, colour jitter, flip), ``masking`` (mask
regularisation inputs), ``loss`` (CLIP and cosine losses), ``optim`` (LAMB, schedule), ``init`` (from-scratch
weights), ``distributed`` (torchrun set-up), ``checkpoint`` (resumable state), ``metrics`` (CSV log) and
``trainer`` (the loop).
"""

from __future__ import annotations

from .config import AugmentConfig, DataConfig, LossConfig, MaskConfig, OptimConfig, Stage, TrainConfig
from .optim import Lamb
from .trainer import TrainResult, train

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "Lamb",
    "LossConfig",
    "MaskConfig",
    "OptimConfig",
    "Stage",
    "TrainConfig",
    "TrainResult",
    "train",
]
