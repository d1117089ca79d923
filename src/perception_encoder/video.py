"""Video files: frame sampling, streaming decode, chunks of long videos, and many videos in DataLoader
workers. (Turning frames into embeddings is ``embedding.video``'s job.)

Decoding uses PyAV (the optional extra ``video``: ``pip install perception-encoder[video]``), imported only
when a video is actually read. Frames are decoded one at a time and only the chosen ones are kept, so a
long video never sits in memory whole.

Conventions (SPEC §5): ``N`` frames at indices ``int(i * (T - 1) / (N - 1))``. A video shorter than ``N``
frames gives each of its frames once: frames are never invented by repeating others (training, which
needs clips of one size, asks for the repeats with ``repeat=True``). At most ``MAX_FRAMES`` frames are
taken from one video in one piece; longer spans go through ``iter_video_chunks``.

Frames come out as ``torch.uint8`` tensors ``(N, H, W, 3)`` (RGB), the layout decoders produce.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import VideoLoadError
from .input_files import media_file
from .limits import MAX_FRAMES

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".ogv"}
)
FRAME_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

PathLike = str | os.PathLike


def is_video_file(path: PathLike) -> bool:
    """True when ``path`` has a video file extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading videos needs PyAV: pip install perception-encoder[video]  (or: pip install av)"
        ) from e
    return av


# --- which frames -------------------------------------------------------------------------------------


def check_num_frames(num_frames: int, what: str = "num_frames") -> int:
    """``num_frames`` after checking it is an int from 1 to ``MAX_FRAMES``."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_FRAMES}, got {num_frames!r}")
    return num_frames


def sample_frame_indices(total_frames: int, num_frames: int = 8, *, repeat: bool = False) -> list[int]:
    """Up to ``num_frames`` frame indices spread uniformly over ``total_frames``: ``int(i * (T - 1) / (N - 1))``.

    The first and last frames are always included (the reference's rule). Edge cases:

    - ``num_frames == 1``: frame ``T // 2``, as the reference's evaluation takes it (the rule divides by
      zero there).
    - ``total_frames < num_frames``: every frame once (``min(T, N)`` indices), since the rule would repeat
      frames. With ``repeat=True`` the rule is applied as is and repeats them, so every video gives
      exactly ``num_frames`` frames (fixed-size training batches).
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, int) or total_frames < 1:
        raise ValueError(f"total_frames must be a positive int, got {total_frames!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    n = num_frames if repeat else min(num_frames, total_frames)
    if n == 1:
        return [total_frames // 2]
    return [int(i * (total_frames - 1) / (n - 1)) for i in range(n)]


class _RateSampler:
    """Picks the frames shown at times ``0, 1/fps, 2/fps, ...`` from a stream of frame times (seconds).

    Each target takes the first frame at or after it; a frame is taken at most once, so an ``fps`` above
    the video's own rate gives every frame once. Shared by ``load_video`` and ``iter_video_chunks``.
    """

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps
        self.target = 0.0

    def take(self, t: float) -> bool:
        t += 1e-6  # timestamps are rounded to the stream's time base
        if t < self.target:
            return False
        # move past every target this frame covers
        self.target += self.step * (math.floor((t - self.target) / self.step) + 1)
        return True


# --- opening and decoding -----------------------------------------------------------------------------


class _Opened:
    """An open container and its first video stream; closes on exit. Decoder errors become
    ``VideoLoadError`` naming the file."""

    def __init__(self, path: PathLike) -> None:
        self.path = media_file(path, "video", VideoLoadError)
        self.av = _import_av()
        self.container = None

    def __enter__(self) -> _Opened:
        try:
            self.container = self.av.open(str(self.path))
        except Exception as e:  # PyAV raises many types (InvalidDataError, EOFError, OSError, IndexError)
            raise VideoLoadError(f"cannot open {str(self.path)!r} as a video: {e}") from e
        if not self.container.streams.video:
            self.container.close()
            raise VideoLoadError(f"{str(self.path)!r} has no video stream")
        fmt = self.container.format.name
        if fmt.endswith("_pipe") or fmt == "image2":
            # ffmpeg reads a single picture as a one-frame "video"; that is an image, not a video
            self.container.close()
            raise VideoLoadError(f"{str(self.path)!r} is a still image ({fmt}), not a video")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame-threaded decoding: same frames, faster
        return self

    def __exit__(self, *exc) -> None:
        if self.container is not None:
            self.container.close()

    @property
    def metadata_frames(self) -> int:
        """Frame count from the container header; 0 when the format does not record it (e.g. WebM)."""
        return int(self.stream.frames or 0)

    @property
    def rate(self) -> float | None:
        rate = self.stream.average_rate or self.stream.guessed_rate
        return float(rate) if rate else None

    def frames(self) -> Iterator[Any]:
        """Decoded frames in presentation order."""
        try:
            yield from self.container.decode(self.stream)
        except self.av.error.FFmpegError as e:
            raise VideoLoadError(f"error while decoding {str(self.path)!r}: {e}") from e

    def packet_count(self) -> int:
        """Frames counted by demuxing (no decoding): the cheap fallback when the header has no count."""
        try:
            return sum(1 for pk in self.container.demux(self.stream) if pk.size > 0)
        except self.av.error.FFmpegError as e:
            raise VideoLoadError(f"error while reading {str(self.path)!r}: {e}") from e


def _frame_time(frame, index: int, rate: float | None) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / rate if rate else float(index)


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _stack(path: Path, frames: list[np.ndarray]) -> torch.Tensor:
    if not frames:
        raise VideoLoadError(f"video {str(path)!r} has no decodable frames")
    return torch.from_numpy(np.stack(frames))


def _decode_indices(path: PathLike, indices: Sequence[int]) -> tuple[list[np.ndarray], int]:
    """Decode until the largest wanted index; keep only wanted frames. Returns (frames in the order of
    ``indices``, number of frames decoded)."""
    wanted = set(indices)
    last = max(indices)
    kept: dict[int, np.ndarray] = {}
    n = 0
    with _Opened(path) as v:
        for i, frame in enumerate(v.frames()):
            n = i + 1
            if i in wanted:
                kept[i] = _to_rgb(frame)
            if i >= last:
                break
    return [kept[i] for i in indices if i in kept], n


class VideoInfo(NamedTuple):
    """What a video's header says: its frame count (counted by demuxing when the header has none) and
    its average frame rate (``None`` when unknown)."""

    frames: int
    fps: float | None


def video_info(path: PathLike) -> VideoInfo:
    """The frame count and frame rate of a video file, without decoding it."""
    with _Opened(path) as v:
        return VideoInfo(v.metadata_frames or v.packet_count(), v.rate)


def frame_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of a video's frames, from its header, without decoding a frame."""
    with _Opened(path) as v:
        return int(v.stream.width or 0), int(v.stream.height or 0)


def load_frames(path: PathLike, pick: Callable[[int], Sequence[int]]) -> torch.Tensor:
    """The frames ``pick(T)`` chooses among a video's ``T`` frames (presentation order, repeats allowed)
    -> uint8 ``(n, H, W, 3)``, decoding only up to the last one.

    ``T`` comes from the container header, or from a demux-only count when the header has none. A header
    can over-count; when fewer frames decode than ``pick`` asked for, ``pick`` chooses again among the
    frames that really decode."""
    total = video_info(path).frames
    if total == 0:
        raise VideoLoadError(f"video {str(path)!r} has no frames")
    indices = list(pick(total))
    if len(indices) > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames are taken from a video at once, got {len(indices)}")
    frames, decoded = _decode_indices(path, indices)
    if len(frames) < len(indices):
        if decoded == 0:
            raise VideoLoadError(f"video {str(path)!r} has no decodable frames")
        indices = list(pick(decoded))
        frames, _ = _decode_indices(path, indices)
    return _stack(Path(path), frames)


def load_video(
    path: PathLike,
    num_frames: int | None = 8,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    repeat: bool = False,
) -> torch.Tensor:
    """Decode chosen frames of a video file -> ``torch.uint8`` ``(N, H, W, 3)`` RGB.

    Modes:

    - ``num_frames=N`` (default 8): ``sample_frame_indices(T, N, repeat=repeat)`` (SPEC §5): ``N`` frames
      uniformly spread, or each frame once for a video of fewer than ``N`` frames (unless ``repeat``).
      ``T`` comes from the container header, or from a demux-only counting pass when the header has none.
    - ``fps=r``: the frames shown at times ``0, 1/r, 2/r, ...`` seconds (``num_frames`` is then ignored).
    - ``num_frames=None`` and no ``fps``: every frame.

    ``max_frames`` caps the count in every mode (the first ``max_frames`` of the chosen frames, or
    ``min(num_frames, max_frames)`` uniformly spread frames). No mode returns more than ``MAX_FRAMES``
    frames: asking for more is a ``ValueError``, and a video that would give more in the every-frame or
    ``fps`` mode without ``max_frames`` raises ``VideoLoadError`` (read it with ``iter_video_chunks``).

    Raises ``VideoLoadError`` naming the file when it is missing, not a regular file, empty, not a video,
    or has no frames.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if max_frames is not None:
        check_num_frames(max_frames, "max_frames")
    if fps is None and num_frames is not None:
        check_num_frames(num_frames)
        n = min(num_frames, max_frames) if max_frames else num_frames
        return load_frames(path, lambda total: sample_frame_indices(total, n, repeat=repeat))
    return _load_stream(path, fps=fps, max_frames=max_frames)


def _load_stream(path: PathLike, *, fps: float | None, max_frames: int | None) -> torch.Tensor:
    """Every frame (``fps=None``) or frames at a rate, in one streaming pass."""
    kept: list[np.ndarray] = []
    with _Opened(path) as v:
        rate = v.rate
        sampler = _RateSampler(fps) if fps is not None else None
        t0 = None
        for i, frame in enumerate(v.frames()):
            t = _frame_time(frame, i, rate)
            t0 = t if t0 is None else t0
            if sampler is not None and not sampler.take(t - t0):
                continue
            if max_frames is None and len(kept) == MAX_FRAMES:
                raise VideoLoadError(
                    f"video {str(path)!r} gives more than {MAX_FRAMES} frames in this mode; pass max_frames, "
                    "a lower fps, or read it in spans with iter_video_chunks"
                )
            kept.append(_to_rgb(frame))
            if max_frames is not None and len(kept) >= max_frames:
                break
    return _stack(v.path, kept)


def iter_frames(path: PathLike) -> Iterator[torch.Tensor]:
    """Every frame of a video, one ``uint8`` ``(H, W, 3)`` tensor at a time (streaming)."""
    any_frame = False
    with _Opened(path) as v:
        for frame in v.frames():
            any_frame = True
            yield torch.from_numpy(_to_rgb(frame))
    if not any_frame:
        raise VideoLoadError(f"video {str(path)!r} has no decodable frames")


def list_frame_files(folder: PathLike) -> list[Path]:
    """Image files in ``folder`` sorted by name (a video stored as numbered frames, e.g. DAVIS)."""
    d = Path(folder)
    if not d.is_dir():
        raise VideoLoadError(f"{str(d)!r} is not a folder of frames")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file())
    if not files:
        raise VideoLoadError(
            f"folder {str(d)!r} holds no frame images ({', '.join(sorted(FRAME_EXTENSIONS))})"
        )
    return files


# --- long videos in chunks ----------------------------------------------------------------------------


class VideoSegment(NamedTuple):
    """A time span of a video and frames sampled from it: ``frames`` is uint8 ``(n, H, W, 3)``."""

    start: float
    end: float
    frames: torch.Tensor
    frame_times: list[float]


def _frame_times(path: PathLike) -> tuple[list[float], float]:
    """Presentation times (seconds from the first frame) of every frame, and the video's duration.

    Read from packet timestamps (demux only, no decoding); a decoding pass is the fallback for files
    whose packets carry no timestamps.
    """
    with _Opened(path) as v:
        tb = float(v.stream.time_base) if v.stream.time_base else None
        rate = v.rate
        try:
            pts = [pk.pts for pk in v.container.demux(v.stream) if pk.size > 0]
        except v.av.error.FFmpegError as e:
            raise VideoLoadError(f"error while reading {str(path)!r}: {e}") from e
    if pts and tb is not None and all(p is not None for p in pts):
        times = sorted(p * tb for p in pts)
    else:
        with _Opened(path) as v:
            times = [_frame_time(f, i, rate) for i, f in enumerate(v.frames())]
    if not times:
        raise VideoLoadError(f"video {str(path)!r} has no frames")
    t0 = times[0]
    times = [t - t0 for t in times]
    frame_period = 1.0 / rate if rate else 0.0
    return times, times[-1] + frame_period


def iter_video_chunks(
    path: PathLike,
    chunk_seconds: float = 10.0,
    frames_per_chunk: int = 8,
    *,
    fps: float | None = None,
) -> Iterator[VideoSegment]:
    """Split a video into consecutive ``chunk_seconds`` spans and yield each with its sampled frames.

    Within a span, ``frames_per_chunk`` frames by the reference rule over the span's frames (distinct
    frames: a span shorter than ``frames_per_chunk`` frames gives all of them), or with ``fps`` the frames
    at that rate. One demux pass reads the timestamps, one decoding pass collects the frames; only the
    current span's chosen frames are held in memory. Spans without frames (gaps) are skipped.
    """
    if not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds!r}")
    if not isinstance(frames_per_chunk, int) or frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be a positive int, got {frames_per_chunk!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    times, duration = _frame_times(path)

    # plan: for each span, the global frame indices to keep
    plans: list[tuple[float, float, list[int]]] = []
    first = 0
    while first < len(times):
        k = int(times[first] // chunk_seconds)
        start, end = k * chunk_seconds, min((k + 1) * chunk_seconds, duration)
        stop = first
        while stop < len(times) and times[stop] < (k + 1) * chunk_seconds:
            stop += 1
        span = times[first:stop]
        if fps is not None:
            sampler = _RateSampler(fps)
            local = [j for j, t in enumerate(span) if sampler.take(t - start)]
        else:
            local = sample_frame_indices(len(span), frames_per_chunk)
        plans.append((start, end, [first + j for j in local]))
        first = stop

    with _Opened(path) as v:
        frames = v.frames()
        i = -1
        for start, end, wanted in plans:
            kept: list[np.ndarray] = []
            for index in wanted:
                while i < index:
                    frame = next(frames, None)
                    if frame is None:  # fewer frames decode than packets: yield what there is
                        break
                    i += 1
                if i == index:
                    kept.append(_to_rgb(frame))
            if kept:
                yield VideoSegment(
                    start, end, torch.from_numpy(np.stack(kept)), [times[j] for j in wanted[: len(kept)]]
                )


# --- frames for a model ------------------------------------------------------------------------------


def frames_to_pixels(frames: torch.Tensor, transform: Callable) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> ``(N, 3, S, S)`` through the image transform (on PIL images, as the
    reference demo feeds frames)."""
    from PIL import Image

    return torch.stack([transform(Image.fromarray(f.numpy())) for f in frames])


def approx_frame_times(
    path: PathLike, n: int, fps: float | None, num_frames: int | None
) -> tuple[list[float], float]:
    """Times (seconds) of the ``n`` frames ``load_video(path, num_frames, fps=fps)`` gave, and the video's
    duration, from the header (frame rate and count): no extra decoding. ``nan`` where the header does not
    tell."""
    with _Opened(path) as v:
        rate = v.rate
        total = v.metadata_frames
        duration = float(v.stream.duration * v.stream.time_base) if v.stream.duration else None
        if duration is None and v.container.duration:
            duration = v.container.duration / 1_000_000  # container duration is in microseconds
    if duration is None:
        duration = total / rate if (rate and total) else float("nan")
    if fps is not None:
        return [i / fps for i in range(n)], duration
    if rate and total and num_frames is not None:
        return [i / rate for i in sample_frame_indices(total, num_frames)], duration
    return [float("nan")] * n, duration


# --- many videos, decoded in DataLoader workers -------------------------------------------------------


@dataclass(frozen=True)
class VideoFailure:
    """A video that could not be loaded: its position in the dataset, its path and why."""

    index: int
    path: str
    error: str


class VideoBatch(NamedTuple):
    """What ``collate_videos`` returns.

    ``frames`` is ``(B, N, 3, H, W)`` when every video has the same frame count (always so with
    ``num_frames``), else a list of ``(N_i, 3, H, W)`` tensors (``fps`` mode); ``indices`` are dataset
    positions of the good videos; ``failures`` the videos that could not be read.
    """

    frames: torch.Tensor | list[torch.Tensor] | None
    indices: list[int]
    failures: list[VideoFailure]


class VideoDataset(Dataset):
    """Video files -> ``(frames (N, 3, H, W) float, index)``, decoded in DataLoader workers.

    A file that cannot be read gives a ``VideoFailure`` instead of raising, so a batch run keeps its good
    videos; use ``collate_videos`` as the DataLoader's ``collate_fn`` to drop and report failures. The
    dataset pickles (paths, a picklable transform, ints), so it works with any number of workers.
    """

    def __init__(
        self,
        paths: Sequence[PathLike],
        transform: Callable,
        num_frames: int = 8,
        fps: float | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.num_frames = num_frames
        self.fps = fps
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | VideoFailure:
        path = self.paths[index]
        try:
            frames = load_video(path, self.num_frames, fps=self.fps, max_frames=self.max_frames)
            return frames_to_pixels(frames, self.transform), index
        except Exception as e:  # any failure of one file must not end the run
            return VideoFailure(index, path, f"{type(e).__name__}: {e}")


def collate_videos(batch: Sequence[tuple[torch.Tensor, int] | VideoFailure]) -> VideoBatch:
    """Collate ``VideoDataset`` items: stack the good ones, set aside failures (see ``VideoBatch``)."""
    failures = [item for item in batch if isinstance(item, VideoFailure)]
    good = [item for item in batch if not isinstance(item, VideoFailure)]
    indices = [i for _, i in good]
    tensors = [f for f, _ in good]
    if not tensors:
        return VideoBatch(None, [], failures)
    if all(t.shape == tensors[0].shape for t in tensors):
        return VideoBatch(torch.stack(tensors), indices, failures)
    return VideoBatch(tensors, indices, failures)
