"""Per-frame scores -> time spans (PE-A-Frame's sound event localisation).

A frame counts when its probability (sigmoid of its logit) is above the threshold (0.3 by default, the
reference's); each run of consecutive counted frames is one span, from the start of its first frame to
the end of its last: frame ``i`` covers ``[i * 0.04, (i + 1) * 0.04)`` seconds at 48 kHz with a hop of 1920.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

DEFAULT_THRESHOLD = 0.3


class Span(NamedTuple):
    """A time span in seconds, and the highest frame probability inside it."""

    start: float
    end: float
    score: float


def frame_spans(
    probs: torch.Tensor,
    frame_seconds: float = 0.04,
    threshold: float = DEFAULT_THRESHOLD,
    valid: int | None = None,
) -> list[Span]:
    """Spans of one prompt in one clip from its per-frame probabilities ``(T,)``. ``valid``: how many
    frames are real audio (the rest is padding and never counts)."""
    if probs.ndim != 1:
        raise ValueError(f"probs must be (T,) per-frame probabilities, got shape {tuple(probs.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    p = probs.detach().float().cpu()
    if valid is not None:
        p = p[:valid]
    above = torch.cat([torch.zeros(1, dtype=torch.bool), p > threshold, torch.zeros(1, dtype=torch.bool)])
    changes = torch.nonzero(above[1:] != above[:-1])[:, 0].tolist()  # rising and falling edges, in turn
    spans = []
    for start, end in zip(changes[::2], changes[1::2], strict=True):
        spans.append(Span(start * frame_seconds, end * frame_seconds, float(p[start:end].max())))
    return spans
