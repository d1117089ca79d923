"""Per-patch feature maps of an image, and saving them to ``.npy`` / ``.safetensors``.

A feature map is ``(H', W', C)``: one ``C``-wide vector per patch, rows and columns of the patch grid
(``H' = H // patch``, ``W' = W // patch`` for an input of ``H x W`` pixels). It is the hidden state after
block ``layer`` (SPEC §2, Python-style index), CLS token dropped, optionally through ``ln_post``.

Images are preprocessed as the reference does (squash-resize, bilinear, mean = std = 0.5) to the model's
native size or to ``image_size``; sizes are rounded down to whole patches so the grid covers the picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..embedding.encoders import vision_tower
from ..images import load_image
from ..transforms import image_transform, to_rgb

ImageInput = Any  # a path, PIL image, uint8 array (H, W, 3) or uint8 tensor: anything ImageTransform reads


def resolve_image_size(visual: torch.nn.Module, image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """``None`` -> the native size; ``S`` -> ``(S, S)``; ``(H, W)`` as given; each rounded down to a
    multiple of the patch size (at least one patch)."""
    p = visual.patch_size
    if image_size is None:
        h = w = visual.config.image_size
    elif isinstance(image_size, int) and not isinstance(image_size, bool):
        h = w = image_size
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(v, int) for v in image_size)
    ):
        h, w = image_size
    else:
        raise TypeError(f"image_size must be None, an int or (height, width), got {image_size!r}")
    if h < p or w < p:
        raise ValueError(f"image_size {image_size!r} is smaller than one {p}x{p} patch")
    return (h // p) * p, (w // p) * p


def to_rgb_image(image: ImageInput) -> Image.Image:
    """Any supported image input -> an RGB PIL image (for drawing and for the original size)."""
    if isinstance(image, Image.Image):
        return to_rgb(load_image(image))
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"image tensors must be uint8 (H, W, 3) or (3, H, W), got dtype {image.dtype}")
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(
                f"image arrays must be uint8 (H, W) or (H, W, 3), got {image.dtype} {tuple(image.shape)}"
            )
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if isinstance(image, (str, os.PathLike, bytes)):
        return to_rgb(load_image(image))
    raise TypeError(f"expected an image path, PIL image, uint8 array or tensor, got {type(image).__name__}")


def preprocess(
    visual: torch.nn.Module, image: ImageInput, image_size: int | Sequence[int] | None = None
) -> tuple[torch.Tensor, Image.Image]:
    """Image -> (pixels ``(1, 3, H, W)`` on the tower's device and dtype, the RGB image as given)."""
    pil = to_rgb_image(image)
    pixels = image_transform(resolve_image_size(visual, image_size))(pil)[None]
    p = next(visual.parameters())
    return pixels.to(device=p.device, dtype=p.dtype), pil


@torch.no_grad()
def grid_features(
    visual: torch.nn.Module, pixels: torch.Tensor, *, layer: int = -1, norm: bool = False
) -> torch.Tensor:
    """Normalised pixels ``(B, 3, H, W)`` -> float32 feature maps ``(B, H', W', C)``."""
    (grid,) = visual.forward_intermediates(pixels, [layer], norm=norm, output_fmt="NCHW")
    return grid.permute(0, 2, 3, 1).float()


@torch.no_grad()
def patch_features(
    model_or_visual: torch.nn.Module,
    image: ImageInput,
    *,
    layer: int = -1,
    image_size: int | Sequence[int] | None = None,
    norm: bool = False,
) -> torch.Tensor:
    """Per-patch features of one image: float32 ``(H', W', C)`` on the model's device.

    ``image``: a path, PIL image, uint8 array ``(H, W, 3)`` or uint8 tensor. ``layer``: block index
    (0 = first block, -1 = last; SPEC §2). ``image_size``: ``S`` or ``(H, W)`` pixels the image is
    squash-resized to (default: the model's native size). ``norm=True`` applies ``ln_post`` (PE-Core).
    """
    visual = vision_tower(model_or_visual)
    pixels, _ = preprocess(visual, image, image_size)
    return grid_features(visual, pixels, layer=layer, norm=norm)[0]


def save_features(features: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Save a feature array to ``.npy`` (numpy) or ``.safetensors`` (key ``"features"``), by extension.

    The array is written as float32 on the CPU, shape unchanged. Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ValueError(f"feature file {str(path)!r} must end with .npy or .safetensors")
    if isinstance(features, torch.Tensor):
        tensor = features.detach().to("cpu", torch.float32).contiguous()
    elif isinstance(features, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    else:
        raise TypeError(f"features must be a torch.Tensor or numpy array, got {type(features).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, tensor.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"features": tensor}, str(path))
    return path


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Read back what ``save_features`` wrote (float32 numpy array)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        data = load_file(str(path))
        if "features" not in data:
            raise ValueError(f"{str(path)!r} has no 'features' tensor (keys: {sorted(data)})")
        return data["features"]
    raise ValueError(f"feature file {str(path)!r} must end with .npy or .safetensors")
