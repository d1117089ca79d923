"""Video files -> embeddings. One rule turns frame embeddings into a video vector: ``clip.pool_frames``
(the mean of the frame embeddings, each normalised first when asked; ``CLIP.encode_video`` uses it too).

- ``VideoLoader``: path -> ``(n, 3, S, S)`` pixels of up to ``num_frames`` frames (``video.load_video``;
  a short video gives each of its frames once);
- ``video_encoder``: an ``embed_files`` encoder for lists of such clips of different lengths;
- ``embed_video_file``: one video, whole or in time spans, with its frame embeddings and times.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..clip import pool_frames
from ..errors import PEError, VideoLoadError
from ..video import (
    approx_frame_times,
    check_num_frames,
    frame_size,
    frames_to_pixels,
    iter_video_chunks,
    load_video,
)
from .encoders import FeatureSpec, PixelsToFeatures, as_encoder, vision_tower


class VideoLoader:
    """path -> ``(n, 3, H, W)``: up to ``num_frames`` frames sampled as ``video.load_video`` does (each frame
    of a shorter video once), each through the image transform. ``max_pixels``: refuse, from the header
    and before decoding, a video whose frames have more pixels (n frames of W x H RGB are held at once).
    Picklable for DataLoader workers."""

    def __init__(
        self, transform: Callable[[Any], torch.Tensor], num_frames: int = 8, *, max_pixels: int | None = None
    ) -> None:
        self.transform = transform
        self.num_frames = check_num_frames(num_frames)
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> torch.Tensor:
        if self.max_pixels is not None:
            width, height = frame_size(path)
            if width * height > self.max_pixels:
                raise VideoLoadError(
                    f"video {str(path)!r} has too many pixels per frame ({width}x{height} = "
                    f"{width * height:,}; the limit is {self.max_pixels:,})"
                )
        return frames_to_pixels(load_video(path, num_frames=self.num_frames), self.transform)

    def load_bytes(self, chunks: Iterable[bytes], name: str) -> torch.Tensor:
        """A video file's bytes (in ``chunks``) -> ``(n, 3, H, W)``, through a temporary file (the decoder
        reads files) removed afterwards; errors name ``name``, not the temporary file. ``name``'s extension
        is kept on the temporary file (some containers are recognised by it)."""
        suffix = os.path.splitext(name)[1].lower()
        fd, tmp = tempfile.mkstemp(prefix="pe-video-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            return self(Path(tmp))
        except PEError as e:
            raise VideoLoadError(str(e).replace(tmp, name)) from e
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def video_encoder(
    encode: PixelsToFeatures, *, normalize_frames: bool = False, batch_size: int = 64
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """An ``embed_files`` encoder for clips: every frame of the clips ``[(n_i, 3, H, W), ...]`` goes through
    ``encode`` in batches of up to ``batch_size`` frames, then each clip's frames are pooled with
    ``pool_frames(normalize=normalize_frames)`` -> ``(len(clips), D)``."""

    def encode_clips(clips: list[torch.Tensor]) -> torch.Tensor:
        frames = torch.cat(clips)
        feats = torch.cat([encode(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)])
        return torch.stack(
            [pool_frames(f[None], normalize_frames)[0] for f in feats.split([len(c) for c in clips])]
        )

    return encode_clips


def _frame_features(model: torch.nn.Module) -> PixelsToFeatures:
    """The pooled image embedding of a PE-Core model; token towers have no video embedding."""
    if vision_tower(model).config.pool_type == "none":
        raise TypeError(
            "video embeddings need a pooled model (PE-Core CLIP or its .visual); this tower returns "
            "token maps (PE-Lang / PE-Spatial): use perception_encoder.dense.patch_features instead"
        )
    return as_encoder(model).features(FeatureSpec())


def embed_video_file(
    model: torch.nn.Module,
    path: str | os.PathLike,
    transform: Callable,
    num_frames: int = 8,
    *,
    fps: float | None = None,
    chunk_seconds: float | None = None,
    batch_size: int = 32,
    normalize: bool = True,
) -> dict[str, Any]:
    """Embed a video file with a PE-Core model (``CLIP`` or its pooled ``.visual``).

    Frames: up to ``num_frames`` uniformly spread (default 8, SPEC §5) or ``fps`` frames per second. With
    ``chunk_seconds`` the video is read in spans (``iter_video_chunks``, ``num_frames`` per span or
    ``fps``) and each span gets its own embedding, for long videos.

    Every embedding here is ``pool_frames(frame embeddings, normalize)``, i.e.
    ``CLIP.encode_video(frames, normalize)``: with ``normalize=True`` (default, SPEC §10) the mean of the
    normalised frame embeddings, not renormalised; with ``normalize=False`` the plain mean. Returns a dict:

    - ``"embedding"``: ``(D,)`` the whole video (over every sampled frame);
    - ``"frame_embeddings"``: ``(N, D)`` (normalised when ``normalize``); ``"frame_times"``: N seconds;
    - ``"segments"``: list of ``{"start", "end", "embedding" (D,), "num_frames"}`` (one span covering the
      whole video when ``chunk_seconds`` is None).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    encode = _frame_features(model)

    def embed(frames: torch.Tensor) -> torch.Tensor:
        pixels = frames_to_pixels(frames, transform)
        return torch.cat([encode(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])

    def pooled(frame_embs: torch.Tensor) -> torch.Tensor:
        return pool_frames(frame_embs[None], normalize)[0]

    segments: list[dict[str, Any]] = []
    all_embs: list[torch.Tensor] = []
    all_times: list[float] = []
    if chunk_seconds is None:
        frames = load_video(path, num_frames, fps=fps)
        emb = embed(frames)
        times, duration = approx_frame_times(path, len(frames), fps, num_frames)
        segments.append({"start": 0.0, "end": duration, "embedding": pooled(emb), "num_frames": len(emb)})
        all_embs.append(emb)
        all_times.extend(times)
    else:
        for seg in iter_video_chunks(path, chunk_seconds, num_frames, fps=fps):
            emb = embed(seg.frames)
            segments.append(
                {"start": seg.start, "end": seg.end, "embedding": pooled(emb), "num_frames": len(emb)}
            )
            all_embs.append(emb)
            all_times.extend(seg.frame_times)
    frame_embs = torch.cat(all_embs)
    return {
        "path": str(path),
        "embedding": pooled(frame_embs),
        # shown as pool_frames saw them: normalised when ``normalize``
        "frame_embeddings": F.normalize(frame_embs, dim=-1) if normalize else frame_embs,
        "frame_times": all_times,
        "segments": segments,
        "normalized_frames": normalize,
    }
