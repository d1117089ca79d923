"""The PE-AV and PE-A-Frame models: encoders, text tower, contrastive heads and logit scales.

Inputs (shapes):

- ``waveform``: ``(B, L)`` or ``(B, 1, L)`` float, mono at 48 kHz (``audio.load_audio``); ``padding_mask``
  ``(B, L)`` with 1 for real samples (``audio.pad_waveforms`` makes both for clips of different lengths).
  Lengths need not be multiples of 1920: the model pads by reflection as the reference does.
- ``frames``: ``(B, N, 3, H, W)`` preprocessed frames (``frames.frames_to_tensor``); ``frame_mask``
  ``(B, N)`` with 1 for real frames.
- ``input_ids`` / ``attention_mask``: ``(B, S)`` from the checkpoint's tokenizer (``model.tokenize``).

Outputs are ``(B, output_dim)`` embeddings in the joint space (``normalize=True`` L2-normalises them), or
per-frame ``(B, T, output_dim)`` for PE-A-Frame, one frame every 40 ms. Scores are raw dot products times a
learned scale plus a learned bias (no cosine, no exponential), as transformers computes them (and the
reference PE-A-Frame; the reference PE-AV has no scales: its scores are the dot products).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .configs import AVConfig
from .encoders import AudioEncoder, FusionEncoder, VideoEncoder
from .heads import ContrastiveHead, LogitScale
from .spans import DEFAULT_THRESHOLD, Span, frame_spans
from .text import TextEncoder, Tokenizer

TextTarget = Literal["audio", "video", "audio_video"]
TEXT_TARGETS: tuple[str, ...] = ("audio", "video", "audio_video")


def _maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(x, dim=-1) if normalize else x


class _TextMixin:
    """The text side both models share: the tower, and the tokenizer that came with the checkpoint."""

    config: AVConfig
    text: TextEncoder
    tokenizer: Tokenizer | None

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``(B, S)``, from the checkpoint's own tokenizer (padding
        to the longest text, at most 512 tokens, as the reference)."""
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: load it from a released name or a folder holding "
                "tokenizer.json, or set model.tokenizer = perception_encoder.av.text.Tokenizer(FOLDER)"
            )
        return self.tokenizer(texts)

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        device = self.text.bert.embeddings.tok_embeddings.weight.device
        mask = attention_mask.to(device) if attention_mask is not None else None
        return self.text(input_ids.to(device), mask)


class PEAudioVisual(_TextMixin, nn.Module):
    """PE-AV: audio, video, audio-video and text in one embedding space (plus audio+text and video+text)."""

    def __init__(self, config: AVConfig) -> None:
        super().__init__()
        if config.kind != "av":
            raise ValueError(f"PEAudioVisual needs a PE-AV config (kind 'av'), got kind {config.kind!r}")
        assert config.video is not None and config.fusion is not None
        self.config = config
        self.tokenizer: Tokenizer | None = None
        text, out = config.text.hidden_size, config.output_dim
        self.text = TextEncoder(config.text)
        self.audio = AudioEncoder(config.dac, config.audio)
        self.video = VideoEncoder(config)
        self.fusion = FusionEncoder(config.fusion)
        self.audio_head = ContrastiveHead(config.audio.hidden_size, out)
        self.video_head = ContrastiveHead(config.video.hidden_size, out)
        self.audio_video_head = ContrastiveHead(config.fusion.hidden_size, out)
        self.text_audio_head = ContrastiveHead(text, out)
        self.text_video_head = ContrastiveHead(text, out)
        self.text_audio_video_head = ContrastiveHead(text, out)
        self.audio_plus_text_head = ContrastiveHead(config.audio.hidden_size + text, out)
        self.video_plus_text_head = ContrastiveHead(config.video.hidden_size + text, out)
        # logits = dot * scale + bias for each pair the model was trained on
        self.audio_text_logit = LogitScale()
        self.video_text_logit = LogitScale()
        self.audio_video_logit = LogitScale()
        self.audio_video_text_logit = LogitScale()
        self.audio_plus_text_logit = LogitScale()  # (audio + text) against video
        self.video_plus_text_logit = LogitScale()  # (video + text) against audio

    @property
    def embed_dim(self) -> int:
        return self.config.output_dim

    # --- single modalities --------------------------------------------------------------------------

    def encode_audio(
        self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """waveform ``(B, L)`` / ``(B, 1, L)`` at 48 kHz -> ``(B, D)``."""
        _, pooled, _ = self.audio(waveform, padding_mask)
        return _maybe_normalize(self.audio_head(pooled), normalize)

    def encode_video(
        self, frames: torch.Tensor, padding_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """frames ``(B, N, 3, H, W)`` with an optional frame mask ``(B, N)`` -> ``(B, D)``."""
        _, pooled, _ = self.video(frames, padding_mask)
        return _maybe_normalize(self.video_head(pooled), normalize)

    def encode_audio_video(
        self,
        waveform: torch.Tensor,
        frames: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """The fused embedding of a clip's sound ``(B, L)`` and frames ``(B, N, 3, H, W)`` -> ``(B, D)``."""
        audio, _, audio_mask = self.audio(waveform, padding_mask)
        video, _, video_mask = self.video(frames, frame_mask)
        _, pooled, _ = self.fusion(audio, audio_mask, video, video_mask)
        return _maybe_normalize(self.audio_video_head(pooled), normalize)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        target: TextTarget = "audio",
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Text ``(B, S)`` -> ``(B, D)`` through the head for matching ``target``: ``"audio"``, ``"video"``
        or ``"audio_video"`` (each has its own head)."""
        heads = {
            "audio": self.text_audio_head,
            "video": self.text_video_head,
            "audio_video": self.text_audio_video_head,
        }
        if target not in heads:
            raise ValueError(f"target must be one of {', '.join(TEXT_TARGETS)}, got {target!r}")
        return _maybe_normalize(heads[target](self._text_features(input_ids, attention_mask)), normalize)

    # --- a modality plus text (the reference's forward order: [audio or video, text]) ----------------

    def encode_audio_plus_text(
        self,
        input_ids: torch.Tensor,
        waveform: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """An audio clip described by a text, ``(B, D)``; compare with video embeddings."""
        _, pooled, _ = self.audio(waveform, padding_mask)
        text = self._text_features(input_ids, attention_mask).to(pooled.device)
        return _maybe_normalize(self.audio_plus_text_head(torch.cat([pooled, text], dim=-1)), normalize)

    def encode_video_plus_text(
        self,
        input_ids: torch.Tensor,
        frames: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        *,
        normalize: bool = False,
    ) -> torch.Tensor:
        """A video described by a text, ``(B, D)``; compare with audio embeddings."""
        _, pooled, _ = self.video(frames, frame_mask)
        text = self._text_features(input_ids, attention_mask).to(pooled.device)
        return _maybe_normalize(self.video_plus_text_head(torch.cat([pooled, text], dim=-1)), normalize)

    # --- scores ------------------------------------------------------------------------------------------

    def logits(self, pair: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(A, D)`` and ``(B, D)`` embeddings -> ``(A, B)`` logits ``a @ b.T * scale + bias`` of ``pair``:
        ``audio_text``, ``video_text``, ``audio_video``, ``audio_video_text``, ``audio_plus_text`` (against
        video) or ``video_plus_text`` (against audio). Sigmoid of a logit is the match probability."""
        scales = {
            "audio_text": self.audio_text_logit,
            "video_text": self.video_text_logit,
            "audio_video": self.audio_video_logit,
            "audio_video_text": self.audio_video_text_logit,
            "audio_plus_text": self.audio_plus_text_logit,
            "video_plus_text": self.video_plus_text_logit,
        }
        if pair not in scales:
            raise ValueError(f"pair must be one of {', '.join(scales)}, got {pair!r}")
        return scales[pair](a @ b.T)


class PEAudioFrame(_TextMixin, nn.Module):
    """PE-A-Frame: every 40 ms audio frame scored against text prompts (sound event localisation)."""

    def __init__(self, config: AVConfig) -> None:
        super().__init__()
        if config.kind != "a-frame":
            raise ValueError(f"PEAudioFrame needs a PE-A-Frame config (kind 'a-frame'), got {config.kind!r}")
        self.config = config
        self.tokenizer: Tokenizer | None = None
        self.text = TextEncoder(config.text)
        self.audio = AudioEncoder(config.dac, config.audio)
        self.audio_head = ContrastiveHead(config.audio.hidden_size, config.output_dim)
        self.text_audio_head = ContrastiveHead(config.text.hidden_size, config.output_dim)
        self.logit_scale = nn.Parameter(torch.ones(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    @property
    def embed_dim(self) -> int:
        return self.config.output_dim

    @property
    def frame_seconds(self) -> float:
        """Seconds per audio frame (0.04)."""
        return self.config.dac.frame_seconds

    def encode_audio_frames(
        self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """waveform ``(B, L)`` at 48 kHz -> per-frame embeddings ``(B, T, D)``, ``T = ceil(L / 1920)``."""
        tokens, _, _ = self.audio(waveform, padding_mask)
        return _maybe_normalize(self.audio_head(tokens), normalize)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """Text prompts ``(B, S)`` -> ``(B, D)``."""
        return _maybe_normalize(
            self.text_audio_head(self._text_features(input_ids, attention_mask)), normalize
        )

    def frame_logits(
        self,
        input_ids: torch.Tensor,
        waveform: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-frame logits ``(audio B_a, texts B_t, frames T)``: the raw dot product of each frame
        embedding with each text embedding, times ``logit_scale``, plus ``logit_bias``. Sigmoid of a logit
        is the probability that the prompt's sound is heard in that frame."""
        frames = self.encode_audio_frames(waveform, padding_mask)  # (Ba, T, D)
        return self.score_frames(frames, self.encode_text(input_ids, attention_mask))

    def score_frames(self, frames: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Frame embeddings ``(B_a, T, D)`` and text embeddings ``(B_t, D)`` -> logits ``(B_a, B_t, T)``."""
        texts = texts.to(frames.device, frames.dtype)
        return torch.einsum("atd,bd->abt", frames, texts) * self.logit_scale + self.logit_bias

    def frame_mask(self, padding_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """The valid frames ``(B, T)`` of a sample padding mask ``(B, L)`` (``None`` when nothing is padded)."""
        return self.audio.frame_mask(padding_mask, length)

    @torch.inference_mode()
    def detect(
        self,
        waveform: torch.Tensor,
        prompts: str | Sequence[str],
        *,
        padding_mask: torch.Tensor | None = None,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[dict[str, list[Span]]]:
        """Where each prompt is heard: for each clip of ``waveform`` (``(L,)``, ``(B, L)`` or ``(B, 1, L)``
        at 48 kHz), ``{prompt: [Span(start s, end s, peak probability), ...]}`` of the runs of frames whose
        probability (sigmoid of ``frame_logits``) is above ``threshold`` (the reference's 0.3). Padded frames
        (``padding_mask``) never count."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        wave = waveform[None] if waveform.ndim == 1 else waveform
        ids, mask = self.tokenize(prompts)
        device = self.logit_scale.device
        frames = self.encode_audio_frames(wave.to(device), padding_mask)
        probs = self.score_frames(frames, self.encode_text(ids, mask)).sigmoid()  # (B, P, T)
        valid = self.frame_mask(padding_mask.to(device), wave.shape[-1]) if padding_mask is not None else None
        out = []
        for i in range(probs.shape[0]):
            n = int(valid[i].sum()) if valid is not None else probs.shape[-1]
            out.append(
                {p: frame_spans(probs[i, j], self.frame_seconds, threshold, n) for j, p in enumerate(prompts)}
            )
        return out
