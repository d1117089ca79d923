"""Mask propagation through video with patch-feature affinities (zero-shot video object segmentation).

The label-propagation protocol of DAVIS-style tracking evaluations (as used to evaluate PE-Spatial, after
DINO's ``eval_video_segmentation``): the first frame's mask is given. For each next frame, every patch
looks at the patches of a context -- the first frame plus the ``context_frames`` previous frames, with
their (soft) labels -- keeps only context patches within ``radius`` patches of its own position (a square
window), takes its ``topk`` most similar ones (cosine of L2-normalised features), weighs them by a softmax
of similarity / ``temperature`` and averages their labels. Predicted soft labels join the context queue;
the output mask is the soft map upsampled bilinearly to the frame's pixels, then the arg-max label.

Defaults follow DINO's evaluation: ``topk=5``, ``temperature=0.1``, ``context_frames=7``, ``radius=12``.
One choice of ours: the first mask is brought to the patch grid by area averaging (the fraction of each
patch that each label covers), which keeps thin objects that nearest-neighbour downsampling would lose.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..embedding.encoders import vision_tower
from ..transforms import image_transform
from .features import grid_features, resolve_image_size, to_rgb_image


def neighborhood_mask(h: int, w: int, radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``(h*w, h*w)``: True where two patches of an ``h x w`` grid are at most ``radius`` rows and
    ``radius`` columns apart (a square window, as in the DINO protocol)."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near_r = (rows[:, None] - rows[None, :]).abs() <= radius
    near_c = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_r & near_c


@torch.no_grad()
def propagate_labels(
    features: torch.Tensor | Iterable[torch.Tensor],
    first_labels: torch.Tensor,
    *,
    topk: int = 5,
    temperature: float = 0.1,
    context_frames: int = 7,
    radius: int | None = 12,
    query_chunk: int = 4096,
) -> Iterator[torch.Tensor]:
    """The propagation core on patch grids (see the module docstring).

    ``features``: ``(N, h, w, C)`` or an iterable of ``(h, w, C)`` maps, one per frame (consumed lazily).
    ``first_labels``: ``(h, w, L)`` soft labels of frame 0 (each patch's label distribution).
    Yields ``(h, w, L)`` float32 label maps, frame 0's (``first_labels``) first. ``radius=None`` lifts the
    spatial restriction. ``query_chunk`` bounds memory: affinities are built for that many patches at once.
    """
    if topk < 1:
        raise ValueError(f"topk must be positive, got {topk}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if context_frames < 0:
        raise ValueError(f"context_frames must be >= 0, got {context_frames}")
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be >= 0 or None, got {radius}")
    frames = iter(features)
    first = next(frames, None)
    if first is None:
        raise ValueError("propagate_labels needs at least one frame of features")
    if first.ndim != 3 or first_labels.ndim != 3 or first.shape[:2] != first_labels.shape[:2]:
        raise ValueError(
            f"first frame features (h, w, C) and labels (h, w, L) must share the grid, got "
            f"{tuple(first.shape)} and {tuple(first_labels.shape)}"
        )
    h, w, _ = first.shape
    n = h * w
    device = first.device
    key0 = F.normalize(first.reshape(n, -1).float(), dim=-1)
    lab0 = first_labels.reshape(n, -1).float().to(device)
    yield lab0.reshape(h, w, -1).clone()
    near = neighborhood_mask(h, w, radius, device) if radius is not None else None
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=context_frames)
    for t, feat in enumerate(frames, start=1):
        if tuple(feat.shape) != tuple(first.shape):
            raise ValueError(f"frame {t} has features {tuple(feat.shape)}, frame 0 had {tuple(first.shape)}")
        query = F.normalize(feat.reshape(n, -1).float().to(device), dim=-1)
        keys = torch.cat([key0] + [k for k, _ in queue])  # (m * n, C), frame by frame
        labels = torch.cat([lab0] + [lab for _, lab in queue])  # (m * n, L)
        m = keys.shape[0] // n
        k = min(topk, keys.shape[0])
        out = torch.empty(n, labels.shape[1], device=device)
        for s in range(0, n, query_chunk):
            q = query[s : s + query_chunk]
            logits = (q @ keys.T) / temperature  # (q, m * n)
            if near is not None:
                far = ~near[s : s + query_chunk]  # (q, n), the same window in every context frame
                logits = (
                    logits.view(len(q), m, n).masked_fill(far[:, None, :], float("-inf")).view(len(q), -1)
                )
            top, idx = logits.topk(k, dim=1)
            weights = torch.softmax(top, dim=1)  # windows always hold the patch itself: no all -inf row
            out[s : s + query_chunk] = torch.einsum("qk,qkl->ql", weights, labels[idx])
        queue.append((query, out))
        yield out.reshape(h, w, -1).clone()


def _mask_array(mask: Any) -> np.ndarray:
    """A mask (PIL image in mode P/L/1/I, numpy array or tensor, 2-D) -> numpy ``(H, W)``."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("P", "L", "1", "I", "I;16"):
            raise ValueError(
                f"mask image mode {mask.mode!r} is not a label image; use a palette (P) or grey (L) PNG "
                "where each value is an object id"
            )
        mask = np.array(mask)
    elif isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W) of object ids, got shape {mask.shape}")
    if mask.dtype.kind not in "biu":
        raise TypeError(f"mask must hold integer or bool object ids, got dtype {mask.dtype}")
    return mask


def _frame_source(frames: Any) -> Iterable[Any]:
    """A video file path, a folder of frame images, or an iterable of images."""
    if isinstance(frames, (str, os.PathLike)):
        from .. import video

        path = Path(frames)
        if path.is_dir():
            return video.list_frame_files(path)
        return video.iter_frames(path)
    if isinstance(frames, torch.Tensor) and frames.ndim != 4:
        raise ValueError(f"a frames tensor must be uint8 (N, H, W, 3), got {tuple(frames.shape)}")
    return frames


@torch.no_grad()
def iter_propagate_masks(
    model: torch.nn.Module,
    frames: Any,
    first_mask: Any,
    *,
    layer: int = -1,
    image_size: int | Sequence[int] | None = None,
    norm: bool = False,
    topk: int = 5,
    temperature: float = 0.1,
    context_frames: int = 7,
    radius: int | None = 12,
    batch_size: int = 8,
) -> Iterator[torch.Tensor]:
    """Propagate ``first_mask`` through ``frames``; yields one ``(H, W)`` mask per frame, streaming.

    ``frames``: a video file, a folder of frame images (sorted by name), a uint8 tensor ``(N, H, W, 3)``
    or any iterable of images. ``first_mask``: ``(H, W)`` object ids for frame 0 (0 = background; a bool
    mask works too), the frame's size. Masks come back with the same ids and dtype as ``first_mask``;
    frame 0's is ``first_mask`` itself. Features are taken at ``layer`` with frames squash-resized to
    ``image_size`` (default: the model's native size), ``batch_size`` frames per forward pass.
    """
    visual = vision_tower(model)
    transform = image_transform(resolve_image_size(visual, image_size))
    param = next(visual.parameters())
    mask = _mask_array(first_mask)
    ids = np.unique(mask)
    onehot = torch.from_numpy(mask[None] == ids[:, None, None]).float()  # (L, H, W)
    sizes: list[tuple[int, int]] = []  # (H, W) of each frame, filled as features are computed

    def feature_stream() -> Iterator[torch.Tensor]:
        batch: list[Image.Image] = []
        source = iter(_frame_source(frames))
        while True:
            item = next(source, None)
            if item is not None:
                batch.append(to_rgb_image(item))
            if batch and (item is None or len(batch) == batch_size):
                pixels = torch.stack([transform(im) for im in batch]).to(param.device, param.dtype)
                sizes.extend((im.height, im.width) for im in batch)
                yield from grid_features(visual, pixels, layer=layer, norm=norm)
                batch = []
            if item is None:
                return

    stream = feature_stream()
    first = next(stream, None)
    if first is None:
        raise ValueError("no frames to propagate the mask through")
    if sizes[0] != mask.shape:
        raise ValueError(
            f"the mask is {mask.shape[0]}x{mask.shape[1]} but the first frame is {sizes[0][0]}x{sizes[0][1]} (HxW)"
        )
    grid = first.shape[:2]
    first_labels = F.interpolate(onehot[None], size=grid, mode="area")[0].permute(1, 2, 0)

    def with_first() -> Iterator[torch.Tensor]:
        yield first
        yield from stream

    labels_iter = propagate_labels(
        with_first(),
        first_labels.to(first.device),
        topk=topk,
        temperature=temperature,
        context_frames=context_frames,
        radius=radius,
    )
    for t, labels in enumerate(labels_iter):
        if t == 0:
            yield torch.from_numpy(mask.copy())
            continue
        soft = F.interpolate(
            labels.permute(2, 0, 1)[None], size=sizes[t], mode="bilinear", align_corners=False
        )
        yield torch.from_numpy(ids[soft[0].argmax(0).cpu().numpy()])


def propagate_masks(model: torch.nn.Module, frames: Any, first_mask: Any, **kwargs) -> torch.Tensor:
    """All masks at once: ``(N, H, W)``, same ids and dtype as ``first_mask`` (see ``iter_propagate_masks``
    for the arguments: ``layer``, ``topk``, ``temperature``, ``context_frames``, ``radius``, ...)."""
    return torch.stack(list(iter_propagate_masks(model, frames, first_mask, **kwargs)))
