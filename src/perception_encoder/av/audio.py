"""Audio in: files -> mono float waveforms at 48 kHz -> padded batches for the model.

Decoding uses PyAV (the ``video`` extra; no other audio library): any container FFmpeg reads (wav, flac,
mp3, ogg, m4a, ... and the sound track of a video file), downmixed to mono and resampled to 48 kHz by
FFmpeg's resampler (libswresample, as the reference's torchcodec decoder uses), as float32. Files are
checked before they are opened (regular files only, not empty); a file that cannot be used raises
``AudioLoadError`` naming it and the problem.

Batches follow the reference's audio processor: each waveform is padded by reflection to a multiple of
the hop (1920 samples), then all are zero-padded to the longest; the padding mask is 1 over each
waveform's reflect-padded length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import AudioLoadError
from ..input_files import media_file
from .dac import reflect_pad

#: The rate every PE-AV model hears (Hz).
SAMPLE_RATE = 48_000
#: Samples per model frame (40 ms at 48 kHz).
HOP_LENGTH = 1920
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".mp3",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".aac",
        ".wma",
        ".aif",
        ".aiff",
        ".caf",
    }
)


def is_audio_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has an audio file extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading audio needs PyAV: pip install -e '.[video]'  (or: pip install av)") from e
    return av


def load_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None
) -> torch.Tensor:
    """The sound of an audio file, or of a video file's first audio stream -> float32 ``(L,)``, mono at
    ``sample_rate`` Hz (48 kHz, what PE-AV hears; other channel counts are downmixed, other rates
    resampled).

    ``max_seconds``: refuse longer audio (decoding stops there) instead of holding it all. Raises
    ``AudioLoadError`` naming the file when it is missing, not a regular file, empty, not decodable, has
    no audio stream, no samples, or is too long.
    """
    p = media_file(path, "audio", AudioLoadError)
    av = _import_av()
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    try:
        container = av.open(str(p))
    except Exception as e:  # PyAV raises many types (InvalidDataError, EOFError, OSError, ...)
        raise AudioLoadError(f"cannot open {str(p)!r} as audio: {e}") from e
    chunks: list[np.ndarray] = []
    total = 0
    try:
        if not container.streams.audio:
            raise AudioLoadError(f"{str(p)!r} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        frames = container.decode(stream)
        while True:
            frame = next(frames, None)
            for out in resampler.resample(frame):  # ``None`` flushes the resampler at the end
                data = out.to_ndarray().reshape(-1)
                chunks.append(data)
                total += data.size
            if limit is not None and total > limit:
                raise AudioLoadError(
                    f"audio {str(p)!r} is longer than {max_seconds:g} s, the most this model takes at once"
                )
            if frame is None:
                break
    except AudioLoadError:
        raise
    except av.error.FFmpegError as e:
        raise AudioLoadError(f"error while decoding {str(p)!r}: {e}") from e
    except (ValueError, RuntimeError) as e:  # a stream FFmpeg opens but cannot resample
        raise AudioLoadError(f"cannot decode the audio of {str(p)!r}: {e}") from e
    finally:
        container.close()
    if total == 0:
        raise AudioLoadError(f"{str(p)!r} has no audio samples")
    wave = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))
    if not bool(torch.isfinite(wave).all()):
        raise AudioLoadError(f"{str(p)!r} decodes to NaN or infinite samples")
    return wave


def pad_waveforms(
    waveforms: Sequence[torch.Tensor], hop: int = HOP_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono waveforms ``(L_i,)`` -> a batch ``(B, 1, L)`` and its padding mask ``(B, L)`` (True on samples),
    as the reference's processor makes them: each padded by reflection to a multiple of ``hop``, then
    zero-padded to the longest. Every ``L_i`` must be at least 1."""
    if not waveforms:
        raise ValueError("pad_waveforms needs at least one waveform")
    padded = []
    for i, w in enumerate(waveforms):
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.ndim == 2 and w.shape[0] == 1:
            w = w[0]
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"waveform {i} must be a non-empty mono (L,) tensor, got shape {tuple(w.shape)}")
        padded.append(reflect_pad(w, hop))
    length = max(w.numel() for w in padded)
    batch = torch.zeros(len(padded), 1, length)
    mask = torch.zeros(len(padded), length, dtype=torch.bool)
    for i, w in enumerate(padded):
        batch[i, 0, : w.numel()] = w
        mask[i, : w.numel()] = True
    return batch, mask


def num_frames(samples: int, hop: int = HOP_LENGTH) -> int:
    """Model frames for ``samples`` samples: ``ceil(samples / hop)`` (one every 40 ms at 48 kHz)."""
    return -(-samples // hop)
