"""Training augmentation: random resized crop, colour jitter and horizontal flip, seeded per sample.

Every random choice comes from a ``random.Random`` seeded by the caller with a key such as
``(run seed, epoch, sample index)``, never from global state, so a sample is augmented identically in any
worker, on any rank, and after a resume: the loss curve of a resumed run matches the uninterrupted one.

A horizontal flip makes spatial captions wrong ("a cat on the left"). With
``flip_swap_left_right`` (the default) the words *left* and *right* are swapped in the caption of a flipped
image, which keeps such captions true; set ``flip=0`` to never flip when captions hold other chiral facts
(text in the image, "clockwise", ...).

The clips of video training get one set of parameters per clip, applied to every frame.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..transforms import image_transform, to_normalized_tensor
from .config import AugmentConfig

_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """Swap the words "left" and "right" (keeping their capitalisation): the caption of the mirrored image."""

    def swap(m: re.Match) -> str:
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new + (m.group(2) or "")

    return _LEFT_RIGHT.sub(swap, caption)


def random_resized_crop_box(
    width: int, height: int, scale: Sequence[float], ratio: Sequence[float], rng: random.Random
) -> tuple[int, int, int, int]:
    """A crop ``(left, top, right, bottom)`` covering a random ``scale`` fraction of the area with an aspect
    ratio in ``ratio`` (log-uniform); after 10 failed draws, the centre crop closest to ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` turns (HSV, 8-bit hue channel wraps around)."""
    h, s, v = img.convert("HSV").split()
    hue = (np.asarray(h, dtype=np.int16) + int(round(shift * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(hue.astype(np.uint8), "L"), s, v)).convert("RGB")


class TrainTransform:
    """Picklable training transform: PIL image(s) + caption -> normalised tensor + (possibly edited) caption."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def _params(self, width: int, height: int, rng: random.Random) -> dict:
        c = self.config
        p: dict = {"box": random_resized_crop_box(width, height, c.crop_scale, c.crop_ratio, rng)}
        if rng.random() < c.color_jitter:
            p["brightness"] = rng.uniform(max(0.0, 1 - c.brightness), 1 + c.brightness)
            p["contrast"] = rng.uniform(max(0.0, 1 - c.contrast), 1 + c.contrast)
            p["saturation"] = rng.uniform(max(0.0, 1 - c.saturation), 1 + c.saturation)
            p["hue"] = rng.uniform(-c.hue, c.hue) if c.hue > 0 else 0.0
        p["flip"] = rng.random() < c.flip
        return p

    def _apply(self, img: Image.Image, size: int, p: dict) -> torch.Tensor:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=p["box"])
        if "brightness" in p:
            img = ImageEnhance.Brightness(img).enhance(p["brightness"])
            img = ImageEnhance.Contrast(img).enhance(p["contrast"])
            img = ImageEnhance.Color(img).enhance(p["saturation"])
            if p["hue"]:
                img = _shift_hue(img, p["hue"])
        if p["flip"]:
            img = ImageOps.mirror(img)
        return to_normalized_tensor(img, self.config.mean, self.config.std)

    def _caption(self, caption: str, p: dict) -> str:
        return swap_left_right(caption) if p["flip"] and self.config.flip_swap_left_right else caption

    def __call__(
        self, img: Image.Image, caption: str, size: int, seed: str | int
    ) -> tuple[torch.Tensor, str]:
        """One image -> ``(3, size, size)`` tensor and its caption. ``seed`` fixes every random choice."""
        if not self.config.enabled:
            tf = image_transform(size, mean=self.config.mean, std=self.config.std)
            return tf(img), caption
        p = self._params(*img.size, random.Random(seed))
        return self._apply(img, size, p), self._caption(caption, p)

    def clip(
        self, frames: Sequence[Image.Image], caption: str, size: int, seed: str | int
    ) -> tuple[torch.Tensor, str]:
        """A clip of N frames -> ``(N, 3, size, size)``, one set of random parameters for all frames."""
        if not self.config.enabled:
            tf = image_transform(size, mean=self.config.mean, std=self.config.std)
            return torch.stack([tf(f) for f in frames]), caption
        p = self._params(*frames[0].size, random.Random(seed))
        return torch.stack([self._apply(f, size, p) for f in frames]), self._caption(caption, p)
