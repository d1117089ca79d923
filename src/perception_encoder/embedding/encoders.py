"""What the embedding pipeline needs of a model, once: its vision tower, its device, whether it has a text
tower, and the small ``Encoder`` protocol (an input size and a pixels -> features function) that PyTorch
models and the onnxruntime ``OnnxEncoder`` both satisfy.

``FeatureSpec`` says which features: the model's own embedding, or block ``layer``'s patch-token mean or
CLS token (SPEC §2: "features at layer k" are taken before ``ln_post``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..finite import check_finite

Pool = Literal["pooled", "mean", "cls"]
POOLS: tuple[str, ...] = ("pooled", "mean", "cls")


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision transformer of a CLIP model (``model.visual``), or the model itself if it is one."""
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "config"):
        raise TypeError(
            f"expected a PE vision tower or a CLIP model with .visual, got {type(model).__name__}"
        )
    return visual


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's parameters (float32 for a model without any)."""
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def has_text_tower(model: object) -> bool:
    return hasattr(model, "encode_text") and hasattr(model, "encode_image")


def require_clip(model: object, task: str) -> None:
    """Raise ``TypeError`` naming ``task`` when ``model`` has no text tower (PE-Lang, PE-Spatial, a vision
    tower alone)."""
    if not has_text_tower(model):
        raise TypeError(
            f"{task} needs a CLIP model with a text tower (PE-Core or the bundled model), not the vision-only "
            f"{type(model).__name__} (PE-Lang / PE-Spatial give features: pe embed, pe eval linear-probe / knn)"
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Which frozen features an image gives.

    ``pool="pooled"``: the model's own embedding (PE-Core: attention-pooled and projected; a token model
    without pooling: the mean of its output patch tokens). ``pool="mean"``: the mean of the patch tokens
    (CLS excluded) after block ``layer``. ``pool="cls"``: the CLS token after block ``layer``. ``layer`` is
    a Python-style block index (0 = first block, -1 = last).
    """

    pool: Pool = "pooled"
    layer: int = -1

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"feature pool must be 'pooled', 'mean' or 'cls', got {self.pool!r}")

    @classmethod
    def from_options(cls, layer: int | None = None, pool: str | None = None) -> FeatureSpec:
        """The spec for ``--layer`` / ``--pool``: no layer means the pooled embedding; a layer with no pool
        means the patch-token mean; ``pooled`` with a layer is a contradiction."""
        if pool == "pooled" and layer is not None:
            raise ValueError("--layer reads block features: use it with --pool mean or --pool cls")
        if layer is None and pool in ("mean", "cls"):
            layer = -1
        return cls(
            pool=pool or ("mean" if layer is not None else "pooled"), layer=-1 if layer is None else layer
        )

    @property
    def is_pooled(self) -> bool:
        return self.pool == "pooled"

    def describe(self) -> str:
        return "pooled embedding" if self.is_pooled else f"{self.pool} of block {self.layer}"


# --- the protocol -------------------------------------------------------------------------------------


PixelsToFeatures = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class Encoder(Protocol):
    """An image encoder the pipeline can run: ``image_size`` (the native input size, ``S`` or ``(H, W)``)
    and ``features(spec)``, a function from float32 CPU pixels ``(B, 3, H, W)`` to float32 CPU features
    ``(B, D)`` that refuses non-finite outputs. ``OnnxEncoder`` and ``TorchEncoder`` satisfy it."""

    image_size: int | tuple[int, int]

    def features(self, spec: FeatureSpec) -> PixelsToFeatures: ...


class TorchEncoder:
    """A PyTorch model (``CLIP`` or a vision tower) as an ``Encoder``: pixels move to the model's device and
    dtype, the pass runs under ``torch.inference_mode``, features come back as float32 on the CPU."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.visual = vision_tower(model)
        self.image_size = self.visual.config.image_size
        self.device = model_device(model)
        self.dtype = model_dtype(model)

    def features(self, spec: FeatureSpec) -> PixelsToFeatures:
        from ..layers.transformer import resolve_layer

        visual, prefix = self.visual, int(self.visual.config.use_cls_token)
        if spec.is_pooled:
            if visual.config.pool_type == "none":

                def run(x: torch.Tensor) -> torch.Tensor:
                    return visual(x)[:, prefix:].mean(dim=1)  # a token model: its mean output patch token

            else:
                run = visual
        else:
            resolve_layer(spec.layer, visual.depth)  # IndexError naming the valid range, before any work
            if spec.pool == "cls" and not prefix:
                raise ValueError("this model has no CLS token; use --pool mean for block features")

            def run(x: torch.Tensor) -> torch.Tensor:
                tokens = visual.forward_features(x, layer=spec.layer)
                return tokens[:, 0] if spec.pool == "cls" else tokens[:, prefix:].mean(dim=1)

        @torch.inference_mode()
        def encode(pixels: torch.Tensor) -> torch.Tensor:
            out = run(pixels.to(self.device, self.dtype)).float().cpu()
            return check_finite(out, f"a batch of {len(pixels)} image(s)", self.model)

        return encode


def as_encoder(model: nn.Module | Encoder) -> Encoder:
    """``model`` itself when it already is an ``Encoder`` (an ``OnnxEncoder``), else a ``TorchEncoder``."""
    return model if isinstance(model, Encoder) else TorchEncoder(model)


def feature_encoder(model: nn.Module | Encoder, spec: FeatureSpec = FeatureSpec()) -> PixelsToFeatures:
    """pixels ``(B, 3, H, W)`` -> features ``(B, D)`` (float32, CPU) for ``spec``; the layer is checked up
    front."""
    return as_encoder(model).features(spec)
