"""Video in for PE-AV: which frames of a file, and their preprocessing for the frame tower.

The reference's video processor, exactly: frames squashed to the frame tower's size with torchvision's
bilinear resize of the uint8 frames (antialiased, rounded back to uint8), scaled to [0, 1] and normalised
with mean = std = 0.5. Which frames:

- the ``-16-frame`` models: 16 frames at ``int(i * (T - 1) / 15)``, a short video's frames repeated as the
  reference's rule repeats them (the model was trained on exactly 16);
- the other models: every frame. At most ``max_frames`` (``MAX_FRAMES``, 256) are taken from one file at
  once: a longer video gives that many frames spread uniformly (the reference would take them all; the
  fusion stretches the video sequence over the audio's 25 Hz length either way).
"""

from __future__ import annotations

import os

import torch

from ..limits import MAX_FRAMES
from ..transforms import normalize_tensor, resize_frames
from ..video import load_frames as decode_frames
from ..video import sample_frame_indices


def frame_indices(total: int, num_frames: int | None, max_frames: int = MAX_FRAMES) -> list[int]:
    """The frames of a ``total``-frame video a PE-AV model sees (see the module's docstring)."""
    if num_frames is not None:
        return sample_frame_indices(total, num_frames, repeat=True)
    if total <= max_frames:
        return list(range(total))
    return sample_frame_indices(total, max_frames)


def frames_to_tensor(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 frames ``(N, H, W, 3)`` -> ``(N, 3, S, S)`` float32: bilinear antialiased squash to ``S`` on the
    uint8 frames (rounded), ``/ 255``, then ``(x - 0.5) / 0.5``."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB, got {frames.dtype} {tuple(frames.shape)}")
    resized = resize_frames(frames.permute(0, 3, 1, 2), (image_size, image_size), mode="bilinear")
    return torch.stack([normalize_tensor(f.float().div(255)) for f in resized])


def load_frames(
    path: str | os.PathLike, image_size: int, num_frames: int | None = None, max_frames: int = MAX_FRAMES
) -> torch.Tensor:
    """A video file -> its PE-AV frames ``(N, 3, S, S)`` (``frame_indices``, ``frames_to_tensor``). Raises
    ``VideoLoadError`` naming the file when it cannot be decoded."""
    frames = decode_frames(path, lambda total: frame_indices(total, num_frames, max_frames))
    return frames_to_tensor(frames, image_size)
