"""PE-AV through the embedding pipeline: audio files, and videos' frames and sound -> one row each.

What a file gives (``modality``): ``"audio"`` (an audio file, or a video's sound track), ``"video"`` (a
video's frames) or ``"audio-video"`` (both, fused); by default audio files give ``"audio"`` and video files
``"video"``. Images are not PE-AV inputs and are skipped with that reason, as are files that cannot be
decoded, have no sound track where one is needed, or are longer than the model takes at once.

Each file is encoded at its own length, never padded to another's: files of the same length (and frame
count) share a forward pass, others get their own, so a file's embedding does not depend on the rest of
its batch. ``embed_av_paths(model, paths)`` equals ``model.encode_audio(load_audio(path)[None])`` row by row
(``encode_video`` / ``encode_audio_video`` for the other modalities).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AudioLoadError, VideoLoadError
from ..finite import check_finite
from ..video import is_video_file
from .encoders import model_device, model_dtype
from .files import check_batch_size, embed_files
from .pipeline import EmbeddingResult

Modality = Literal["audio", "video", "audio-video"]
MODALITIES: tuple[str, ...] = ("audio", "video", "audio-video")
#: Text prompts per forward pass (as for CLIP's text tower).
TEXT_BATCH_SIZE = 256


def is_av_model(model: object) -> bool:
    """A PE-AV or PE-A-Frame model (``perception_encoder.av``)."""
    from ..av.model import PEAudioFrame, PEAudioVisual

    return isinstance(model, (PEAudioVisual, PEAudioFrame))


def require_av_model(model: object, task: str) -> None:
    """``TypeError`` naming ``task`` unless ``model`` is PE-AV (PE-A-Frame scores frames: detect-sounds)."""
    from ..av.model import PEAudioFrame, PEAudioVisual

    if isinstance(model, PEAudioFrame):
        raise TypeError(
            f"{task} needs a PE-AV model (pe-av-*); PE-A-Frame models score audio frames against text "
            "prompts: use pe detect-sounds"
        )
    if not isinstance(model, PEAudioVisual):
        raise TypeError(f"{task} needs a PE-AV model (pe-av-*), not {type(model).__name__}")


def max_audio_seconds(model: nn.Module) -> float:
    """The longest audio the model takes at once: its audio tower's positions (CLS included) x 40 ms."""
    c = model.config
    return (c.audio.max_positions - 1) * c.dac.frame_seconds


class AVItem(NamedTuple):
    """One loaded file: which modality, its waveform ``(L,)`` and/or its frames ``(N, 3, S, S)``."""

    modality: str
    waveform: torch.Tensor | None
    frames: torch.Tensor | None


def file_modality(path: str | os.PathLike, modality: str | None) -> str:
    """The modality ``path`` is read as: ``modality`` when given, else ``"video"`` for a video file and
    ``"audio"`` otherwise (audio files; anything else fails to decode with a reason)."""
    if modality is not None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        return modality
    return "video" if is_video_file(path) else "audio"


class AVLoader:
    """path -> ``AVItem`` for a PE-AV model. Picklable (loader processes)."""

    def __init__(
        self,
        modality: str | None,
        image_size: int | None,
        num_frames: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        self.modality = modality
        self.image_size = image_size
        self.num_frames = num_frames
        self.max_seconds = max_seconds

    def __call__(self, path: Path) -> AVItem:
        from ..av.audio import is_audio_file, load_audio
        from ..av.frames import load_frames
        from ..images import IMAGE_EXTENSIONS

        kind = file_modality(path, self.modality)
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            raise AudioLoadError(f"{str(path)!r} is an image; PE-AV embeds audio and video files")
        needs_frames = kind in ("video", "audio-video")
        if needs_frames and (self.image_size is None or is_audio_file(path)):
            raise VideoLoadError(f"{str(path)!r} has no video frames for --modality {kind}")
        wave = load_audio(path, max_seconds=self.max_seconds) if kind != "video" else None
        frames = load_frames(path, self.image_size, self.num_frames) if needs_frames else None
        return AVItem(kind, wave, frames)


def av_encoder(model: nn.Module, *, normalize: bool = False) -> Callable[[list[AVItem]], torch.Tensor]:
    """An ``embed_files`` encoder for ``AVItem``s: items of one modality and one length are stacked into a
    forward pass (no padding); rows come back in the batch's order (L2-normalised when ``normalize``)."""
    require_av_model(model, "embedding audio and video")
    device, dtype = model_device(model), model_dtype(model)

    def run(kind: str, items: list[AVItem]) -> torch.Tensor:
        wave = torch.stack([it.waveform for it in items])[:, None] if kind != "video" else None
        frames = torch.stack([it.frames for it in items]) if kind != "audio" else None
        to = {"device": device, "dtype": dtype}
        if kind == "audio":
            return model.encode_audio(wave.to(**to))
        if kind == "video":
            return model.encode_video(frames.to(**to))
        return model.encode_audio_video(wave.to(**to), frames.to(**to))

    @torch.inference_mode()
    def encode(items: list[AVItem]) -> torch.Tensor:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            shape = (
                it.modality,
                None if it.waveform is None else it.waveform.shape[0],
                None if it.frames is None else tuple(it.frames.shape),
            )
            groups[shape].append(i)
        out: list[torch.Tensor | None] = [None] * len(items)
        for (kind, _, _), idx in groups.items():
            rows = run(kind, [items[i] for i in idx]).float().cpu()
            check_finite(rows, f"a batch of {len(idx)} {kind} file(s)", model)
            for i, row in zip(idx, rows, strict=True):
                out[i] = row
        rows = torch.stack(out)
        return F.normalize(rows, dim=-1) if normalize else rows

    return encode


def embed_av_paths(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    modality: str | None = None,
    batch_size: int = 8,
    normalize: bool = False,
    num_workers: int = 0,
    progress: bool = False,
) -> EmbeddingResult:
    """Embed audio and video files with a PE-AV model: one row per file (see the module's docstring);
    files that cannot be used are skipped with their reasons (``result.skipped``), never fatal."""
    require_av_model(model, "embedding audio and video")
    check_batch_size(batch_size)
    if modality is not None:
        file_modality("", modality)  # validates the name before any file is read
    files = [Path(p) for p in paths]
    loader = AVLoader(modality, model.config.image_size, model.config.num_frames, max_audio_seconds(model))
    out = embed_files(
        files,
        loader,
        av_encoder(model, normalize=normalize),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc="audio/video",
        share_duplicates=False,
    )
    if not out.index:
        return EmbeddingResult(torch.empty(0, 0), [], out.skipped, out.notes)
    return EmbeddingResult(out.values.float(), [files[i] for i in out.index], out.skipped, out.notes)


@torch.inference_mode()
def embed_av_texts(
    model: nn.Module,
    texts: Sequence[str],
    target: str = "audio",
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    normalize: bool = False,
) -> torch.Tensor:
    """Text embeddings ``(T, D)`` (float32, CPU) through the text head for ``target`` (``"audio"``,
    ``"video"`` or ``"audio_video"``; PE-A-Frame has one), tokenised by the checkpoint's tokenizer."""
    from ..av.model import PEAudioFrame

    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = model.tokenize(list(texts[i : i + batch_size]))
        if isinstance(model, PEAudioFrame):
            emb = model.encode_text(ids, mask, normalize=normalize)
        else:
            emb = model.encode_text(ids, mask, target, normalize=normalize)
        out.append(check_finite(emb.float().cpu(), f"the text {texts[i]!r} (or its batch)", model))
    return torch.cat(out) if out else torch.empty(0, model.config.output_dim)


def text_target(modality: str) -> str:
    """The text head that matches embeddings of ``modality`` (``"audio-video"`` -> ``"audio_video"``)."""
    return modality.replace("-", "_")


#: The logit scale and bias that score each modality against text.
TEXT_PAIRS = {"audio": "audio_text", "video": "video_text", "audio-video": "audio_video_text"}


@torch.inference_mode()
def av_label_probs(
    model: nn.Module,
    embeddings: torch.Tensor,
    modalities: Sequence[str],
    labels: Sequence[str],
    templates: Sequence[str] = ("{}",),
) -> torch.Tensor:
    """Zero-shot probabilities ``(N, C)`` over ``labels`` of ``N`` PE-AV embeddings (row ``i`` of modality
    ``modalities[i]``): each label's text embedding is the mean of its templates' (``{}`` replaced by the
    label) through the text head of that modality; logits are the model's (dot product x the pair's scale
    + bias), turned into probabilities over the labels by a softmax."""
    require_av_model(model, "zero-shot classification of audio and video")
    out = torch.empty(len(embeddings), len(labels))
    for kind in dict.fromkeys(modalities):
        prompts = [t.replace("{}", label) for label in labels for t in templates]
        text = embed_av_texts(model, prompts, text_target(kind)).view(len(labels), len(templates), -1).mean(1)
        scale = getattr(model, f"{TEXT_PAIRS[kind]}_logit")
        rows = [i for i, m in enumerate(modalities) if m == kind]
        dots = embeddings[rows].float() @ text.T
        logits = dots * scale.scale.detach().float().cpu() + scale.bias.detach().float().cpu()
        out[rows] = logits.softmax(dim=-1)
    return out
