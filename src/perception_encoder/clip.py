"""CLIP: a vision tower and a text tower side by side (composition), with a learnable logit scale.

State-dict layout: ``visual.<vision keys>``, ``text.<text keys>``, ``logit_scale``. The reference
checkpoint keeps the text keys at the top level instead; ``weights.formats`` maps between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import CLIPConfig
from .text import TextTransformer, check_token_ids, trim_after_last_eot
from .vision import VisionTransformer


def pool_frames(frame_embeddings: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """The one rule turning frame embeddings ``(B, N, D)`` into video embeddings ``(B, D)``: their mean,
    each frame normalised first when ``normalize`` (the reference's ``encode_video``); the mean itself is
    not renormalised (callers that want unit vectors normalise it, as ``pe embed --normalize`` does)."""
    if normalize:
        frame_embeddings = F.normalize(frame_embeddings, dim=-1)
    return frame_embeddings.mean(dim=1)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.text = TextTransformer(config.text)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def embed_dim(self) -> int:
        return self.config.text.output_dim

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> embeddings ``(B, embed_dim)``."""
        x = self.visual(pixels)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_video(self, frames: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Videos ``(B, N, 3, H, W)`` -> ``(B, embed_dim)``: ``pool_frames`` of the N frame embeddings (each
        normalised before the mean with ``normalize=True``, as the reference's ``encode_video``; the mean
        is not renormalised)."""
        if frames.ndim != 5:
            raise ValueError(f"frames must have shape (B, N, 3, H, W), got {tuple(frames.shape)}")
        b, n = frames.shape[:2]
        return pool_frames(self.encode_image(frames.flatten(0, 1)).reshape(b, n, -1), normalize)

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids ``(B, L)`` (from ``perception_encoder.tokenizer``) -> embeddings ``(B, embed_dim)``.

        The ids are checked and cut after the batch's last end-of-text token here, before the text tower
        runs, so a compiled tower (``model.text.compile()``) gets the short batches too.
        """
        if not torch.compiler.is_compiling():
            check_token_ids(token_ids, self.text.config.vocab_size, self.text.config.context_length)
            token_ids = trim_after_last_eot(token_ids)
        x = self.text(token_ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, pixels: torch.Tensor | None = None, token_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Normalised image and text embeddings (either may be ``None``) and ``logit_scale.exp()``."""
        img = self.encode_image(pixels, normalize=True) if pixels is not None else None
        txt = self.encode_text(token_ids, normalize=True) if token_ids is not None else None
        return img, txt, self.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)
