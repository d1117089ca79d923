"""Image preprocessing that reproduces the reference transform exactly (SPEC §5).

The reference pipeline is torchvision's ``Resize((S, S), BILINEAR)`` (or ``Resize(S)`` + ``CenterCrop(S)``)
applied to the PIL image in its original mode, then ``convert("RGB")``, ``ToTensor()`` and
``Normalize(mean, std)``. This module does the same steps with Pillow, numpy and torch only, in the same
order and with the same float32 arithmetic, so the tensors are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

DEFAULT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _mean_std_tensors(
    mean: Sequence[float], std: Sequence[float], dtype: torch.dtype, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) tensors for broadcasting; validated so a bad value fails with a clear message."""
    mean_t = torch.as_tensor(list(mean), dtype=dtype, device=device)
    std_t = torch.as_tensor(list(std), dtype=dtype, device=device)
    if mean_t.shape != (3,) or std_t.shape != (3,):
        raise ValueError(f"mean and std need 3 values (one per RGB channel), got mean={mean!r}, std={std!r}")
    if bool((std_t == 0).any()):
        raise ValueError(f"std must not contain zeros, got std={std!r}")
    return mean_t.view(3, 1, 1), std_t.view(3, 1, 1)


def normalize_tensor(
    tensor: torch.Tensor, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> torch.Tensor:
    """``(x - mean) / std`` per channel on a float (3, H, W) tensor in [0, 1]; returns a new tensor.

    Subtract then divide, in the tensor's dtype: the same arithmetic as torchvision's ``Normalize``.
    """
    mean_t, std_t = _mean_std_tensors(mean, std, tensor.dtype, tensor.device)
    return tensor.sub(mean_t).div_(std_t)


def pil_to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float32 (3, H, W) in [0, 1], exactly as torchvision's ``ToTensor`` does it.

    uint8 -> float32, then divide by 255 (a division, not a multiplication by 1/255: the last bit differs).
    """
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; convert it first")
    # np.array copies, so the tensor owns writable memory (torch warns on read-only buffers)
    array = np.array(img, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def to_normalized_tensor(
    img: Image.Image, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> torch.Tensor:
    """A PIL image of any mode -> normalised float32 tensor (3, H, W), with no resizing.

    Converts to RGB (Pillow's conversion: grey is repeated, alpha is dropped, palettes are expanded),
    scales to [0, 1] and normalises with ``mean`` and ``std`` -- the last three steps of the reference
    transform, for callers (such as tiling) that resize themselves.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"to_normalized_tensor expects a PIL image, got {type(img).__name__}")
    return normalize_tensor(pil_to_unit_tensor(img.convert("RGB")), mean, std)
