"""The model side of the server: what runs on the model thread, for the torch and the onnxruntime backends.

Every function here takes inputs already decoded (pixels, strings) and returns float32 CPU tensors, and
goes through the library's own pipeline, so a server's output equals the library's for the same input:

- media: ``embedding.pipeline.media_encoder`` over the encoder's pooled features (``as_encoder(model)
  .features(FeatureSpec())``): images ``(3, S, S)`` and videos ``(n, 3, S, S)`` (frames pooled by
  ``clip.pool_frames``, each frame normalised first), every row L2-normalised: ``pe embed --normalize``;
- text: ``embedding.embed_texts`` (the CLIP tokenizer at the model's context length, ``encode_text``,
  normalised); an ONNX text graph through the same tokenizer;
- features (torch only): ``dense.features.grid_features`` for patch grids, ``FeatureSpec(pool="mean",
  layer=L)`` for their pooled mean (``pe embed --layer L``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..embedding import FeatureSpec, as_encoder, embed_texts, vision_tower
from ..embedding.encoders import has_text_tower, model_device, model_dtype
from ..embedding.pipeline import media_encoder
from ..finite import check_finite
from ..tokenization import tokenizer as make_tokenizer


@dataclass(frozen=True)
class FeatureItem:
    """One image of a ``/v1/features`` request: its pixels ``(3, H, W)``, the block and the output kind
    (``"patch"``: the ``(H', W', C)`` grid; ``"pooled"``: the ``(C,)`` mean of its patch tokens)."""

    pixels: torch.Tensor
    layer: int
    output: str


class Backend:
    """A loaded model as the server uses it. Attributes: ``name`` (the id clients see), ``image_size``,
    ``embed_dim``, ``context_length`` (``None`` without a text tower), ``model`` (the torch model; ``None``
    for onnxruntime), ``kind`` ("torch" or "onnxruntime")."""

    def __init__(
        self,
        name: str,
        kind: str,
        image_encoder: Any,
        vision_config: Any,
        *,
        texts: Callable[[list[str]], torch.Tensor] | None = None,
        context_length: int | None = None,
        model: torch.nn.Module | None = None,
        frame_batch_size: int = 32,
    ) -> None:
        self.name = name
        self.kind = kind
        self.model = model
        self.image_size = image_encoder.image_size
        self.vision_config = vision_config
        pooled = vision_config.pool_type != "none"
        self.embed_dim = int(vision_config.output_dim if pooled else vision_config.width)
        self.context_length = context_length
        self._texts = texts
        self._media = media_encoder(
            image_encoder.features(FeatureSpec()), normalize=True, batch_size=frame_batch_size
        )

    # --- constructors -----------------------------------------------------------------------------------

    @classmethod
    def from_torch(cls, model: torch.nn.Module, name: str, *, frame_batch_size: int = 32) -> Backend:
        """A ``CLIP`` model or a vision tower, in eval mode."""
        texts = None
        context = None
        if has_text_tower(model):
            context = model.text.context_length
            tok = make_tokenizer(context)

            def texts(batch: list[str]) -> torch.Tensor:
                return embed_texts(model, batch, tok, normalize=True)

        return cls(
            name,
            "torch",
            as_encoder(model),
            vision_tower(model).config,
            texts=texts,
            context_length=context,
            model=model.eval(),
            frame_batch_size=frame_batch_size,
        )

    @classmethod
    def from_onnx(
        cls, graphs: Sequence[str | os.PathLike], name: str | None = None, *, frame_batch_size: int = 32
    ) -> Backend:
        """Graphs written by ``pe export onnx``: one image graph (required) and at most one text graph."""
        from ..export import OnnxEncoder

        by_kind: dict[str, OnnxEncoder] = {}
        for path in graphs:
            graph = OnnxEncoder(path)
            if graph.what not in ("image", "text"):
                raise ValueError(
                    f"{path} is a {graph.what} graph; the server takes an image graph and a text graph (videos "
                    "are embedded frame by frame with the image graph)"
                )
            if graph.what in by_kind:
                raise ValueError(f"two {graph.what} graphs given: {by_kind[graph.what].path} and {path}")
            by_kind[graph.what] = graph
        if "image" not in by_kind:
            raise ValueError(
                "the onnxruntime backend needs an image graph: --onnx IMAGE.onnx (pe export onnx)"
            )
        image = by_kind["image"]
        texts = None
        context = None
        if "text" in by_kind:
            text = by_kind["text"]
            context = text.context_length
            tok = make_tokenizer(context)

            def texts(batch: list[str]) -> torch.Tensor:
                out = F.normalize(text.encode_text(tok(batch)).float(), dim=-1)
                return check_finite(out, f"the text {batch[0]!r} (or its batch) in {text.path.name}")

        label = name or image.model_name or image.path.stem
        return cls(
            label,
            "onnxruntime",
            image,
            image.vision_config,
            texts=texts,
            context_length=context,
            frame_batch_size=frame_batch_size,
        )

    # --- what runs on the model thread -------------------------------------------------------------------

    @property
    def has_text(self) -> bool:
        return self._texts is not None

    def embed_media(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Images ``(3, S, S)`` and videos ``(n, 3, S, S)`` -> ``(len(items), D)``, L2-normalised."""
        return self._media(items)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Strings -> ``(len(texts), D)``, L2-normalised (over-long text cut as the tokenizer does)."""
        if self._texts is None:
            raise RuntimeError("this model has no text tower")
        return self._texts(texts)

    def features(self, items: list[FeatureItem]) -> list[torch.Tensor]:
        """Per item: ``(H', W', C)`` (patch) or ``(C,)`` (pooled) float32 features after block ``layer``.
        Items of one (layer, output) run as one batch."""
        if self.model is None:
            raise RuntimeError("features need the torch backend")
        from ..dense.features import grid_features

        visual = vision_tower(self.model)
        device, dtype = model_device(self.model), model_dtype(self.model)
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.layer, item.output), []).append(i)
        for (layer, output), idx in groups.items():
            pixels = torch.stack([items[i].pixels for i in idx])
            if output == "patch":
                values = grid_features(visual, pixels.to(device, dtype), layer=layer).float().cpu()
            else:
                values = as_encoder(self.model).features(FeatureSpec(pool="mean", layer=layer))(pixels)
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out  # type: ignore[return-value]

    def warm_up(self) -> None:
        """One forward of each tower (the first call of a model pays one-time costs)."""
        size = self.image_size
        h, w = (size, size) if isinstance(size, int) else size
        self.embed_media([torch.zeros(3, h, w)])
        if self.has_text:
            self.embed_texts(["a photo"])

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` says about the model."""
        modalities = ["image", "video"] + (["text"] if self.has_text else [])
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "perception-encoder",
            "backend": self.kind,
            "modalities": sorted(modalities),
            "embedding_dimensions": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "features": self.model is not None,
            "layers": vision_tower(self.model).depth if self.model is not None else None,
        }
