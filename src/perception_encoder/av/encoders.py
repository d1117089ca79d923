"""The three PE-AV encoders: audio (codec -> tower), video (frame embeddings -> tower) and their fusion.

Each returns per-position outputs ``(B, T, C)``, the pooled output ``(B, C)`` and the mask of valid
positions ``(B, T)`` (``None`` when nothing is padded):

- ``AudioEncoder``: waveform ``(B, L)`` / ``(B, 1, L)`` at 48 kHz -> codec features at 25 Hz (``T =
  ceil(L / 1920)``) -> linear -> tower. A sample padding mask ``(B, L)`` becomes a frame mask by taking
  every 1920th sample, as the reference does.
- ``VideoEncoder``: frames ``(B, N, 3, H, W)`` (``frames.frames_to_tensor``) -> the frame tower (a PE-Core
  vision tower, pooled and projected), L2-normalised -> linear (no bias) -> linear -> tower (``T = N``).
- ``FusionEncoder``: the video sequence aligned to the audio's length (1x1 convolution, each row's valid
  frames stretched over its valid audio frames by nearest-neighbour interpolation, LayerNorm), concatenated
  with the audio sequence, projected twice, then a tower under the audio's mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..vision import VisionTransformer
from .configs import AVConfig, DacConfig, TowerConfig
from .dac import Codec
from .tower import Tower

Encoded = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]

#: Frames through the frame tower at once (memory stays bounded for all-frames models; results do not
#: depend on it beyond float rounding).
FRAME_CHUNK = 64


def _bool_mask(mask: torch.Tensor | None, shape: tuple[int, int], what: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


class AudioEncoder(nn.Module):
    def __init__(self, dac: DacConfig, tower: TowerConfig) -> None:
        super().__init__()
        self.hop = dac.hop_length
        self.codec = Codec(dac)
        self.data_proj = nn.Linear(dac.codebook_dim, tower.hidden_size)
        self.transformer = Tower(tower)

    def frame_mask(self, padding_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """Sample mask ``(B, L)`` -> frame mask ``(B, ceil(L / hop))``: every ``hop``-th sample."""
        if padding_mask is None:
            return None
        if padding_mask.ndim != 2 or padding_mask.shape[1] != length:
            raise ValueError(
                f"padding_mask must be (B, {length}) like the waveform's samples, got {tuple(padding_mask.shape)}"
            )
        return padding_mask[:, :: self.hop].to(torch.bool)

    def forward(self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None) -> Encoded:
        if waveform.ndim not in (2, 3):
            raise ValueError(f"waveform must be (B, L) or (B, 1, L), got {tuple(waveform.shape)}")
        mask = self.frame_mask(padding_mask, waveform.shape[-1])
        features = self.codec(waveform)  # (B, T, codebook_dim)
        tokens, pooled = self.transformer(self.data_proj(features), mask)
        return tokens, pooled, mask


class VideoEncoder(nn.Module):
    def __init__(self, config: AVConfig) -> None:
        super().__init__()
        assert config.frames is not None and config.video is not None
        width = config.video.hidden_size
        self.pe_encoder = VisionTransformer(config.frames)
        self.proj = nn.Linear(config.frames.output_dim, width, bias=False)
        self.data_proj = nn.Linear(width, width)
        self.transformer = Tower(config.video)

    def frame_features(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N, 3, H, W)`` -> L2-normalised frame embeddings ``(B, N, D)``. Padded frames (``mask``
        False) are not computed: their positions are masked everywhere downstream, so zeros stand in."""
        b, n = frames.shape[:2]
        flat = frames.reshape(b * n, *frames.shape[2:])
        keep = torch.arange(b * n, device=frames.device) if mask is None else mask.reshape(-1).nonzero()[:, 0]
        out = flat.new_zeros(b * n, self.pe_encoder.output_dim, dtype=self.proj.weight.dtype)
        for start in range(0, keep.numel(), FRAME_CHUNK):
            idx = keep[start : start + FRAME_CHUNK]
            out[idx] = self.pe_encoder(flat[idx]).to(out.dtype)
        return F.normalize(out.view(b, n, -1), dim=-1)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> Encoded:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, N, 3, H, W) preprocessed pixels, got {tuple(frames.shape)}")
        mask = _bool_mask(frame_mask, tuple(frames.shape[:2]), "frame_mask")
        x = self.data_proj(self.proj(self.frame_features(frames, mask)))
        tokens, pooled = self.transformer(x, mask)
        return tokens, pooled, mask


class ModalityAligner(nn.Module):
    """Video tokens ``(B, Tv, C)`` -> ``(B, Ta, C)`` on the audio's time axis."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size=1)
        self.layer_norm = nn.LayerNorm(width)

    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor | None,
        audio_length: int,
        audio_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        v = self.conv(video.transpose(1, 2))  # (B, C, Tv)
        b, _, tv = v.shape
        full = torch.full((b,), tv, device=v.device)
        v_sizes = video_mask.sum(-1) if video_mask is not None else full
        a_sizes = audio_mask.sum(-1) if audio_mask is not None else torch.full_like(full, audio_length)
        if tv == audio_length and bool((v_sizes == a_sizes).all()):
            aligned = v  # the reference's shortcut: already one frame per audio frame
        else:
            # each row's valid video frames stretched over its valid audio frames; the rest stays zero
            aligned = v.new_zeros(b, v.shape[1], audio_length)
            for i, (nv, na) in enumerate(zip(v_sizes.tolist(), a_sizes.tolist(), strict=True)):
                if nv > 0 and na > 0:
                    aligned[i, :, :na] = F.interpolate(v[i : i + 1, :, :nv], size=int(na), mode="nearest")[0]
        return self.layer_norm(aligned.transpose(1, 2))


class FusionEncoder(nn.Module):
    def __init__(self, tower: TowerConfig) -> None:
        super().__init__()
        width = tower.hidden_size
        self.aligner = ModalityAligner(width)
        self.concat_modality_proj = nn.Linear(2 * width, width)
        self.data_proj = nn.Linear(width, width)
        self.transformer = Tower(tower)

    def forward(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor | None,
        video: torch.Tensor,
        video_mask: torch.Tensor | None,
    ) -> Encoded:
        """``audio`` ``(B, Ta, C)`` and ``video`` ``(B, Tv, C)`` tower outputs with their masks."""
        aligned = self.aligner(video, video_mask, audio.shape[1], audio_mask)
        x = self.data_proj(self.concat_modality_proj(torch.cat([audio, aligned], dim=-1)))
        tokens, pooled = self.transformer(x, audio_mask)
        return tokens, pooled, audio_mask
