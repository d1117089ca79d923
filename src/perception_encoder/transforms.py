"""Image preprocessing that reproduces the reference transform exactly (SPEC §5).

The reference pipeline is torchvision's ``Resize((S, S), BILINEAR)`` (or ``Resize(S)`` + ``CenterCrop(S)``)
applied to the PIL image in its original mode, then ``convert("RGB")``, ``ToTensor()`` and
``Normalize(mean, std)``. This module does the same steps with Pillow, numpy and torch only, in the same
order and with the same float32 arithmetic, so the tensors are bit-identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .images import load_image

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


#: Pillow modes of more than 8 bits per pixel: 16- and 32-bit integers, 32-bit floats.
HIGH_BIT_DEPTH_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
HighBitDepth = Literal["clip", "scale"]


class HighBitDepthWarning(UserWarning):
    """A 16-bit or float image converted as the reference does: values above 255 saturate."""


def to_rgb(img: Image.Image, high_bit_depth: HighBitDepth = "clip") -> Image.Image:
    """A PIL image of any mode -> RGB (Pillow's conversion: grey is repeated, alpha is dropped, palettes
    are expanded).

    16-bit and float images (``HIGH_BIT_DEPTH_MODES``): with ``"clip"`` (the reference's behaviour, the
    default) Pillow clips every value to 0-255, so most 16-bit pixels become white and [0, 1] floats black;
    a ``HighBitDepthWarning`` says so. ``"scale"`` maps the full range to 0-255 instead: integers from
    0-65535 (16 bits), floats from [0, 1].
    """
    if high_bit_depth not in ("clip", "scale"):
        raise ValueError(f"high_bit_depth must be 'clip' or 'scale', got {high_bit_depth!r}")
    if img.mode in HIGH_BIT_DEPTH_MODES:
        if high_bit_depth == "scale":
            values = np.asarray(img, dtype=np.float64) * (255.0 if img.mode == "F" else 255.0 / 65535.0)
            return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L").convert("RGB")
        warnings.warn(
            HighBitDepthWarning(
                f"16-bit or float images (mode {img.mode}) are converted to 8 bits as the reference does, "
                "clipping values above 255 (white) and below 0; high_bit_depth='scale' "
                "(pe: --high-bit-depth scale) maps 0-65535 or [0, 1] to 0-255 instead"
            ),
            stacklevel=2,
        )
    return img.convert("RGB")


def to_normalized_tensor(
    img: Image.Image,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    high_bit_depth: HighBitDepth = "clip",
) -> torch.Tensor:
    """A PIL image of any mode -> normalised float32 tensor (3, H, W), with no resizing.

    Converts to RGB (``to_rgb``), scales to [0, 1] and normalises with ``mean`` and ``std`` -- the last
    three steps of the reference transform, for callers (such as tiling) that resize themselves.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"to_normalized_tensor expects a PIL image, got {type(img).__name__}")
    return normalize_tensor(pil_to_unit_tensor(to_rgb(img, high_bit_depth)), mean, std)


# ---------------------------------------------------------------------------------------------------------
# the full transform

_PIL_RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# modes torch's interpolate offers for float tensors (antialias applies to bilinear and bicubic only)
_TENSOR_MODES: dict[str, str] = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}
# (C, H, W) float tensors may stray from [0, 1] by float rounding; beyond this it is a scaling mistake
_UNIT_RANGE_TOLERANCE = 1e-3


def _parse_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> (H, W) of positive ints."""
    if isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int or (height, width), got {image_size!r}")
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size):
            raise TypeError(f"image_size must be an int or (height, width) of ints, got {image_size!r}")
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def resize_cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) to resize to before a centre crop of ``target`` = (H, W), keeping the aspect ratio.

    For a square target this is torchvision's ``Resize(S)`` rule: the short side becomes S and the long
    side ``int(S * long / short)``. For a non-square target the side with the larger scale factor is set
    to its target and the other follows by the same rule, so the image covers the crop box.
    """
    th, tw = target
    # compare th/height with tw/width without rounding; on a tie (square target on a square image, or
    # the square rule) the shorter side is the one matched, as in torchvision
    if th * width > tw * height or (th * width == tw * height and height <= width):
        return th, int(th * width / height)
    return int(tw * height / width), tw


def _center_crop_box(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop: ``int(round((size - crop) / 2))`` (banker's rounding)."""
    th, tw = target
    return int(round((height - th) / 2.0)), int(round((width - tw) / 2.0))


def _array_to_pil(array: np.ndarray, what: str) -> Image.Image:
    """uint8 HW / HW1 / HW3 / HW4 -> PIL image in mode L / L / RGB / RGBA."""
    if array.dtype != np.uint8:
        raise TypeError(
            f"{what} must have dtype uint8 (0-255), got {array.dtype}; for float images in [0, 1] pass a "
            "torch float tensor (C, H, W)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        mode = "RGB" if array.shape[2] == 3 else "RGBA"
    else:
        raise ValueError(
            f"{what} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _uint8_tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """uint8 tensor (C, H, W) with C in 1/3/4, (H, W, 3|4|1) or (H, W) -> PIL image (channels-first wins
    when both readings fit, as is the torch convention)."""
    t = tensor.detach().cpu()
    if t.ndim == 3:
        if t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"uint8 image tensor must be (C, H, W) or (H, W, C) with C in 1, 3, 4; got {tuple(t.shape)}"
            )
    return _array_to_pil(t.numpy(), "uint8 image tensor")


class ImageTransform:
    """The reference image preprocessing as a picklable callable: image -> float32 tensor (3, H, W).

    Steps for PIL images (and inputs turned into one), matching torchvision's PIL path bit for bit:

    1. resize **in the image's original mode** with Pillow (palette and 1-bit images are resized with
       NEAREST by Pillow itself; RGBA/LA are resized with premultiplied alpha):
       squash to exactly (H, W) by default, or with ``center_crop=True`` resize keeping the aspect ratio so
       the image covers (H, W) (the short side becomes S for a square size) and crop the centre;
    2. ``convert("RGB")``;
    3. uint8 -> float32, divide by 255;
    4. subtract ``mean``, divide by ``std``.

    Accepted inputs: a file path or encoded bytes (read with :func:`~perception_encoder.images.load_image`),
    a PIL image of any mode, a numpy uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), a torch uint8
    tensor (C, H, W) or (H, W, C). A torch **float** tensor (C, H, W) with values in [0, 1] (C = 1, 3 or 4;
    alpha is dropped, grey repeated) is not a PIL image, so it is resized with ``torch.nn.functional
    .interpolate`` (antialias on for bilinear/bicubic); results are close to, not identical with, the PIL
    path. Float tensors keep their device; everything else returns a CPU tensor.

    Args:
        image_size: ``S`` for S x S, or ``(height, width)``.
        center_crop: resize keeping the aspect ratio and crop the centre, instead of squashing.
        mean, std: per-channel normalisation (PE uses 0.5 and 0.5).
        interpolation: "bilinear" (the reference), "bicubic", "nearest", "lanczos", "box" or "hamming"
            (the last three for PIL inputs only).
        high_bit_depth: how 16-bit and float images become 8-bit RGB: "clip" (the reference, with a
            ``HighBitDepthWarning``) or "scale" (see ``to_rgb``).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        center_crop: bool = False,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        interpolation: str = "bilinear",
        high_bit_depth: HighBitDepth = "clip",
    ) -> None:
        self.image_size = _parse_size(image_size)
        self.center_crop = bool(center_crop)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        _mean_std_tensors(self.mean, self.std, torch.float32)  # validate now, not at the first image
        if interpolation not in _PIL_RESAMPLING:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_RESAMPLING)}, got {interpolation!r}")
        self.interpolation = interpolation
        if high_bit_depth not in ("clip", "scale"):
            raise ValueError(f"high_bit_depth must be 'clip' or 'scale', got {high_bit_depth!r}")
        self.high_bit_depth = high_bit_depth

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, center_crop={self.center_crop}, "
            f"mean={self.mean}, std={self.std}, interpolation={self.interpolation!r}, "
            f"high_bit_depth={self.high_bit_depth!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageTransform):
            return NotImplemented
        return repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def __call__(self, image) -> torch.Tensor:
        """image (see the class docstring) -> float32 tensor (3, H, W), normalised."""
        if isinstance(image, torch.Tensor):
            if image.dtype == torch.uint8:
                return self.transform_pil(_uint8_tensor_to_pil(image))
            if image.is_floating_point():
                return self.transform_float_tensor(image)
            raise TypeError(f"image tensor must be uint8 (0-255) or float in [0, 1], got dtype {image.dtype}")
        if isinstance(image, np.ndarray):
            return self.transform_pil(_array_to_pil(image, "image array"))
        if isinstance(image, (Image.Image, str, bytes, bytearray, memoryview)) or hasattr(
            image, "__fspath__"
        ):
            # load_image also decodes a lazily opened PIL image, so corrupt data fails with a clear error
            return self.transform_pil(load_image(image))
        raise TypeError(
            "image must be a path, bytes, PIL image, numpy uint8 array or torch tensor, "
            f"got {type(image).__name__}"
        )

    def resize_pil(self, image: Image.Image) -> Image.Image:
        """Step 1 only: the resized (and cropped) PIL image, still in its original mode."""
        target = self.image_size
        resample = _PIL_RESAMPLING[self.interpolation]
        w, h = image.size
        if w == 0 or h == 0:
            raise ValueError(f"image is empty: size {w}x{h}")
        if not self.center_crop:
            # torchvision skips the resize when the size already matches; Pillow's copy is the same pixels
            return image if (h, w) == target else image.resize((target[1], target[0]), resample)
        rh, rw = resize_cover_size(h, w, target)
        if (rh, rw) != (h, w):
            image = image.resize((rw, rh), resample)
        top, left = _center_crop_box(rh, rw, target)
        return image.crop((left, top, left + target[1], top + target[0]))

    def transform_pil(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> float32 (3, H, W), the reference steps."""
        return to_normalized_tensor(self.resize_pil(image), self.mean, self.std, self.high_bit_depth)

    def transform_float_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """Float tensor (C, H, W) in [0, 1] -> float32 (3, H, W), resized with torch (see the class doc)."""
        if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"float image tensor must be (C, H, W) with C in 1, 3, 4; got {tuple(image.shape)}"
            )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"float image tensor is empty: shape {tuple(image.shape)}")
        x = image.detach().to(torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < -_UNIT_RANGE_TOLERANCE or hi > 1 + _UNIT_RANGE_TOLERANCE:
            raise ValueError(
                f"float image tensor must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                "divide 0-255 data by 255 or pass a uint8 tensor"
            )
        x = x[:3] if x.shape[0] == 4 else x.expand(3, -1, -1) if x.shape[0] == 1 else x
        mode = _TENSOR_MODES.get(self.interpolation)
        if mode is None:
            raise ValueError(
                f"interpolation {self.interpolation!r} is only available for PIL inputs; float tensors "
                f"support {sorted(_TENSOR_MODES)}"
            )
        target = self.image_size
        h, w = x.shape[1:]
        if self.center_crop:
            rh, rw = resize_cover_size(h, w, target)
        else:
            rh, rw = target
        if (rh, rw) != (h, w):
            kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
            x = torch.nn.functional.interpolate(x[None], size=(rh, rw), mode=mode, **kwargs)[0]
        if self.center_crop:
            top, left = _center_crop_box(rh, rw, target)
            x = x[:, top : top + target[0], left : left + target[1]]
        return normalize_tensor(x.contiguous(), self.mean, self.std)


def image_transform(image_size: int | tuple[int, int], center_crop: bool = False, **kwargs) -> ImageTransform:
    """The reference preprocessing for a model's input size: ``S`` or ``(height, width)``.

    ``kwargs`` go to :class:`ImageTransform` (``mean``, ``std``, ``interpolation``, ``high_bit_depth``). The default (squash,
    bilinear, mean = std = 0.5) is what PE models were trained and evaluated with.
    """
    return ImageTransform(image_size, center_crop=center_crop, **kwargs)


def resize_frames(frames: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """uint8 frames ``(N, C, H, W)`` -> uint8 ``(N, C, h, w)``, squashed with torch's bicubic (or
    ``mode="bilinear"``: PE-AV's frames) interpolation with antialiasing, as torchvision's ``resize`` does a
    uint8 tensor (PerceptionLM's video path): to float32, ``interpolate(mode, align_corners=False,
    antialias=True)``, clamped to 0-255, rounded. Frames already of that size come back unchanged."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 (N, C, H, W), got {frames.dtype} {tuple(frames.shape)}")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    x = torch.nn.functional.interpolate(
        frames.float(), size=tuple(size), mode=mode, align_corners=False, antialias=True
    )
    return x.clamp_(0, 255).round_().to(torch.uint8)


def denormalize(
    tensor: torch.Tensor, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> torch.Tensor:
    """Undo the normalisation for display: (3, H, W) or (B, 3, H, W) -> same shape, float in [0, 1].

    Multiply by 255 and round to get uint8 pixels; values are clamped to [0, 1].
    """
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(f"denormalize expects (3, H, W) or (B, 3, H, W), got {tuple(tensor.shape)}")
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    mean_t, std_t = _mean_std_tensors(mean, std, dtype, tensor.device)
    return (tensor.to(dtype) * std_t + mean_t).clamp_(0.0, 1.0)
