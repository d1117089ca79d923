"""A PE vision tower, the PerceptionLM projector and any causal language model, as one module.

The vision tower gives patch tokens after block ``layer`` (no ``ln_post``, CLS dropped); the projector maps
them to the language model's width and pools them; the results replace the embeddings of the placeholder
tokens in the prompt (each position filled exactly once, in order of appearance). Everything else is the
language model's own forward / generate, fed ``inputs_embeds``.

Shapes: ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, L)``; ``pixel_values`` a list with one
``(chunks, 3, H, W)`` tensor per medium (tiles of an image, frames of a video, or one native-resolution
image) in order of appearance over the batch -- what ``VLMProcessor`` produces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..vision import VisionTransformer
from .processor import VLMBatch, VLMProcessor
from .projector import PLMProjector, load_plm_projector

__all__ = ["VisionLanguageModel"]


class VisionLanguageModel(nn.Module):
    """PE vision tower + ``PLMProjector`` + a ``transformers`` causal LM, with its tokenizer.

    Args:
        vision: any ``VisionTransformer`` (PE-Lang for PerceptionLM; PE-Core / PE-Spatial work too).
        language_model: a ``transformers`` causal LM (``AutoModelForCausalLM``), e.g. Llama or Qwen2.
        tokenizer: its tokenizer; the placeholders are added as special tokens when missing and the LM's
            embedding matrix is grown to match.
        projector: a trained projector (e.g. ``load_plm_projector(...)``); default: a fresh one.
        layer: the vision block whose output is used (Python-style index; -1 = last block).
        pooling_ratio: of a fresh projector (2 in PerceptionLM's tiled stages).
        tile_size: tile / frame side in pixels; default the vision tower's native image size.
        max_tiles, max_frames, image_token, video_token, native_max_tokens, add_eos, max_length:
            defaults of the ``processor`` (see ``VLMProcessor``).
        vision_batch_size: the most tiles/frames sent through the vision tower at once.
    """

    def __init__(
        self,
        vision: VisionTransformer,
        language_model: nn.Module,
        tokenizer: Any,
        projector: PLMProjector | None = None,
        *,
        layer: int = -1,
        pooling_ratio: int = 2,
        tile_size: int | None = None,
        max_tiles: int = 36,
        max_frames: int = 32,
        image_token: str = "<image>",
        video_token: str = "<video>",
        native_max_tokens: int | None = None,
        add_eos: bool = True,
        max_length: int | None = None,
        vision_batch_size: int = 64,
    ) -> None:
        super().__init__()
        if not isinstance(vision, VisionTransformer):
            raise TypeError(f"vision must be a VisionTransformer, got {type(vision).__name__}")
        if not hasattr(language_model, "get_input_embeddings"):
            raise TypeError(
                f"language_model must be a transformers causal LM, got {type(language_model).__name__}"
            )
        self.vision = vision
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.layer = layer
        lm_width = language_model.get_input_embeddings().embedding_dim
        if projector is None:
            projector = PLMProjector(vision.width, lm_width, pooling_ratio)
        if (projector.vision_width, projector.lm_width) != (vision.width, lm_width):
            raise ValueError(
                f"projector maps {projector.vision_width} -> {projector.lm_width}, but the vision tower is "
                f"{vision.width} wide and the language model {lm_width}"
            )
        self.projector = projector
        self.vision_batch_size = vision_batch_size
        self.processor = VLMProcessor(
            tokenizer,
            patch_size=vision.patch_size,
            tile_size=tile_size or vision.config.image_size,
            pooling_ratio=projector.pooling_ratio,
            max_tiles=max_tiles,
            max_frames=max_frames,
            image_token=image_token,
            video_token=video_token,
            native_max_tokens=native_max_tokens,
            add_eos=add_eos,
            max_length=max_length,
        )
        if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
            language_model.resize_token_embeddings(len(tokenizer))

    # --- facts -----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.projector.linear_1.weight.device

    @property
    def image_token_id(self) -> int:
        return self.processor.image_token_id

    @property
    def video_token_id(self) -> int:
        return self.processor.video_token_id

    def freeze(self, vision: bool = True, language_model: bool = True, projector: bool = False) -> None:
        """Set ``requires_grad`` per part (frozen = no gradient); PerceptionLM's stage 1 trains the projector only."""
        for module, frozen in (
            (self.vision, vision),
            (self.language_model, language_model),
            (self.projector, projector),
        ):
            for p in module.parameters():
                p.requires_grad_(not frozen)

    # --- visual tokens ---------------------------------------------------------------------------------

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(N, grid_h * grid_w, W)`` of block ``layer`` for pixels ``(N, 3, H, W)``: no
        ``ln_post``, CLS dropped."""
        return self.vision.forward_intermediates(pixels, [self.layer], norm=False, drop_cls=True)[0]

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens ``(N, T, D)`` for same-size pixels ``(N, 3, H, W)``, one row per tile/frame."""
        grid = self.vision.grid_shape(*pixels.shape[-2:])
        vision_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())
        outs = []
        for start in range(0, pixels.shape[0], self.vision_batch_size):
            chunk = pixels[start : start + self.vision_batch_size]
            with torch.set_grad_enabled(vision_grad):  # a frozen tower needs no activations kept
                feats = self.vision_features(chunk.to(self.vision.conv1.weight.device))
            feats = feats.to(device=self.device, dtype=self.projector.linear_1.weight.dtype)
            outs.append(self.projector(feats, grid=grid))
        return torch.cat(outs)

    def encode_media(self, pixel_values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One ``(visual tokens, D)`` tensor per medium: its chunks' projected tokens, chunk after chunk.

        Chunks of equal size from all media go through the vision tower together.
        """
        by_size: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for i, p in enumerate(pixel_values):
            if not isinstance(p, torch.Tensor) or p.ndim != 4 or p.shape[1] != 3:
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"pixel_values[{i}] must be a (chunks, 3, H, W) tensor, got {shape}")
            by_size.setdefault(tuple(p.shape[-2:]), []).append((i, p))
        out: list[torch.Tensor | None] = [None] * len(pixel_values)
        for group in by_size.values():
            tokens = self.visual_tokens(torch.cat([p for _, p in group]))
            for (i, _), chunk_tokens in zip(group, tokens.split([p.shape[0] for _, p in group]), strict=True):
                out[i] = chunk_tokens.reshape(-1, chunk_tokens.shape[-1])
        return out  # type: ignore[return-value]

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: Sequence[torch.Tensor] | None = None,
        media_types: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Token embeddings ``(B, L, D)`` with every placeholder position replaced by a visual token.

        Media fill placeholder positions in order of appearance (row by row, left to right); each medium
        must meet a run of exactly its own number of placeholders of its own kind inside one row, and every
        placeholder is filled exactly once -- otherwise ``ValueError`` says where they disagree.
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)
        ids = (self.image_token_id, self.video_token_id)
        mask = (input_ids == ids[0]) | (input_ids == ids[1])
        pixel_values = list(pixel_values or [])
        if not pixel_values:
            if bool(mask.any()):
                raise ValueError(
                    f"input_ids hold {int(mask.sum())} image/video placeholders but no pixel_values"
                )
            return embeds
        if media_types is not None and len(media_types) != len(pixel_values):
            raise ValueError(f"{len(media_types)} media_types for {len(pixel_values)} pixel_values")
        features = self.encode_media(pixel_values)
        counts = [f.shape[0] for f in features]
        positions = mask.nonzero()  # row-major: the order masked_scatter fills
        if positions.shape[0] != sum(counts):
            raise ValueError(
                f"input_ids hold {positions.shape[0]} placeholders but the media give {sum(counts)} visual "
                f"tokens ({counts}); build inputs with model.processor"
            )
        start = 0
        for i, n in enumerate(counts):
            span = positions[start : start + n]
            rows, tokens = span[:, 0], input_ids[span[:, 0], span[:, 1]]
            kind = "image" if int(tokens[0]) == ids[0] else "video"
            if bool((rows != rows[0]).any()) or bool((tokens != tokens[0]).any()):
                raise ValueError(
                    f"medium {i} ({n} tokens) does not match one run of placeholders of one kind"
                )
            if media_types is not None and media_types[i] != kind:
                raise ValueError(f"medium {i} is a {media_types[i]} but its placeholders are {kind} tokens")
            start += n
        visual = torch.cat(features).to(device=embeds.device, dtype=embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), visual)

    # --- the language model ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: Sequence[torch.Tensor] | None = None,
        media_types: Sequence[str] | None = None,
        **lm_kwargs: Any,
    ) -> Any:
        """The language model's output (``.logits`` ``(B, L, vocab)``; ``.loss`` when ``labels`` are given:
        mean next-token cross-entropy over positions whose label is not -100, i.e. answer tokens)."""
        embeds = self.embed_inputs(input_ids, pixel_values, media_types)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: Sequence[torch.Tensor] | None = None,
        media_types: Sequence[str] | None = None,
        labels: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids ``(B, new)`` from the language model's ``generate`` fed ``inputs_embeds``.

        Prompts of a batch should be left-padded (``VLMProcessor`` does so without answers). Placeholder
        ids are never generated (``suppress_tokens``) unless ``generate_kwargs`` says otherwise.
        ``labels`` is accepted and ignored so a training batch can be passed as is.
        """
        embeds = self.embed_inputs(input_ids, pixel_values, media_types)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        generate_kwargs.setdefault("suppress_tokens", [self.image_token_id, self.video_token_id])
        generate_kwargs.setdefault("pad_token_id", self.processor.pad_token_id)
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )

    def answer(
        self,
        prompts: str | Sequence[str],
        images: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
        max_new_tokens: int = 64,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Prompts (with placeholders) and media in, decoded answers out (one ``str`` for one prompt)."""
        batch: VLMBatch = self.processor(prompts, images=images, videos=videos, padding_side="left")
        batch = batch.to(self.device, self.projector.linear_1.weight.dtype)
        was_training = self.training
        self.eval()
        try:
            out = self.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
        finally:
            self.train(was_training)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts[0] if isinstance(prompts, str) else texts

    # --- projector weights -----------------------------------------------------------------------------

    def save_projector(self, path: str | os.PathLike) -> None:
        """Write the projector's weights (``linear_1.*``, ``linear_2.*``) and pooling ratio to a
        ``.safetensors`` file, readable by ``load_plm_projector``."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        save_file(tensors, str(path), metadata={"pooling_ratio": str(self.projector.pooling_ratio)})

    def load_projector(self, source: Mapping[str, torch.Tensor] | str | os.PathLike) -> None:
        """Load projector weights from any format ``load_plm_projector`` reads; widths and pooling ratio
        must match this model's."""
        loaded = load_plm_projector(source, pooling_ratio=self.projector.pooling_ratio)
        if (loaded.vision_width, loaded.lm_width) != (self.projector.vision_width, self.projector.lm_width):
            raise ValueError(
                f"the checkpoint's projector maps {loaded.vision_width} -> {loaded.lm_width}, this model needs "
                f"{self.projector.vision_width} -> {self.projector.lm_width}"
            )
        ref = self.projector.linear_1.weight
        self.projector.load_state_dict(
            {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in loaded.state_dict().items()}
        )

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """As ``nn.Module.train``; frozen parts (no parameter requiring grad) stay in eval mode."""
        super().train(mode)
        for module in (self.vision, self.language_model):
            if mode and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def extra_repr(self) -> str:
        p = self.processor
        return (
            f"layer={self.layer}, tile_size={p.tile_size}, tokens_per_tile={p.tokens_per_chunk()}, "
            f"max_tiles={p.max_tiles}, max_frames={p.max_frames}"
        )
