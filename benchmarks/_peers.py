"""The peer libraries, loaded from their own checkpoint files the way their users load them."""

from __future__ import annotations

from pathlib import Path

import torch

TIMM_NAMES = {
    "PE-Core-T16-384": "vit_pe_core_tiny_patch16_384",
    "PE-Core-S16-384": "vit_pe_core_small_patch16_384",
    "PE-Core-B16-224": "vit_pe_core_base_patch16_224",
    "PE-Core-L14-336": "vit_pe_core_large_patch14_336",
}
OPEN_CLIP_NAMES = {
    "PE-Core-T16-384": "PE-Core-T-16-384",
    "PE-Core-S16-384": "PE-Core-S-16-384",
    "PE-Core-B16-224": "PE-Core-B-16",
    "PE-Core-L14-336": "PE-Core-L-14-336",
}


def load_timm(name: str, file: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """timm's PE vision tower with the weights in ``file`` (timm layout), in eval mode."""
    import timm

    model = timm.create_model(TIMM_NAMES[name], pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    return (model.to(dtype) if dtype is not None else model).eval()


def load_open_clip(name: str, file: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """open_clip's PE-Core CLIP model with the weights in ``file`` (open_clip layout), in eval mode."""
    import open_clip

    model = open_clip.create_model(OPEN_CLIP_NAMES[name], pretrained=str(file))
    return (model.to(dtype) if dtype is not None else model).eval()


def peer_versions() -> dict[str, str]:
    import open_clip
    import timm

    return {"timm": timm.__version__, "open_clip": open_clip.__version__}
