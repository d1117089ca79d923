"""Loading one ``InputItem`` into model pixels, in loader processes (``ItemLoader`` pickles).

Images become ``(3, H, W)`` through the image transform; videos (a file, URL or tar member whose name has
a video extension) ``(n, 3, H, W)``: up to ``num_frames`` frames sampled as ``video.load_video`` does, each
through the transform, exactly as ``embedding.video.VideoLoader`` loads a video file. Video bytes (from a
URL or a tar member) are written to a temporary file for the decoder and removed afterwards.

Every failure is an ``ItemLoadError`` naming the item (its id and source) and the reason, so one bad input
is reported and skipped without stopping the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import torch

from ..embedding.files import ImageLoader
from ..embedding.video import VideoLoader
from ..errors import PEError
from ..input_files import MAX_IMAGE_FILE_BYTES, file_problem
from ..video import VIDEO_EXTENSIONS, check_num_frames
from .fetch import fetch_url
from .items import InputItem

_CHUNK = 1 << 20  # bytes copied at a time from a tar member to a temporary video file


class ItemLoadError(PEError, ValueError):
    """An input item that cannot be loaded; the message names the item and the reason."""


class _Unusable(Exception):
    """A reason found here (the message is the reason alone; ``ItemLoader`` adds the item)."""


def describe(item: InputItem) -> str:
    """How messages name an item: the name given for a single file, else its id and where it is from."""
    if item.id == item.source:
        return item.source
    if item.kind == "member":
        return f"sample {item.id!r} of {item.source}"
    return f"{item.id!r} from {item.source}"


def _is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _member_chunks(item: InputItem) -> Iterator[bytes]:
    """The bytes of tar member ``item`` (``offset`` .. ``offset + size`` of the tar ``ref``), in chunks,
    never more than its size; the member must fit in the file and under ``MAX_IMAGE_FILE_BYTES``."""
    problem = file_problem(item.ref)
    if problem is not None:
        raise _Unusable(f"cannot read tar {item.ref}: {problem}")
    if item.offset < 0 or item.size < 0:
        raise _Unusable(f"member {item.name} has an invalid offset {item.offset} or size {item.size}")
    if item.size > MAX_IMAGE_FILE_BYTES:
        raise _Unusable(
            f"member {item.name} is too large ({item.size:,} bytes; the limit is {MAX_IMAGE_FILE_BYTES:,})"
        )
    with open(item.ref, "rb") as f:
        if item.offset + item.size > os.fstat(f.fileno()).st_size:
            raise _Unusable(f"member {item.name} of {item.ref} is cut short (the tar is truncated)")
        f.seek(item.offset)
        left = item.size
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:  # the file shrank since the size check
                raise _Unusable(f"member {item.name} of {item.ref} is cut short (the tar is truncated)")
            left -= len(chunk)
            yield chunk


class ItemLoader:
    """``InputItem`` -> pixels: ``(3, H, W)`` for an image, ``(n, 3, H, W)`` for a video.

    Args:
        transform: the image transform (an ``ImageTransform``, or any picklable callable taking a PIL
            image and returning ``(3, H, W)``).
        num_frames: frames taken from a video (1 to ``MAX_FRAMES``; a shorter video gives each frame once).
        fetch_timeout, fetch_retries: per-attempt time limit and retries of ``fetch_url`` for URL items.

    Picklable, so DataLoader workers and Ray tasks can use it. Raises ``ItemLoadError`` naming the item.
    """

    def __init__(
        self,
        transform: Callable[[Any], torch.Tensor],
        num_frames: int = 8,
        fetch_timeout: float = 30.0,
        fetch_retries: int = 3,
    ) -> None:
        if not (isinstance(fetch_timeout, (int, float)) and not isinstance(fetch_timeout, bool)) or not (
            fetch_timeout > 0
        ):
            raise ValueError(f"fetch_timeout must be a positive number of seconds, got {fetch_timeout!r}")
        if isinstance(fetch_retries, bool) or not isinstance(fetch_retries, int) or fetch_retries < 0:
            raise ValueError(f"fetch_retries must be an integer >= 0, got {fetch_retries!r}")
        self.transform = transform
        self.num_frames = check_num_frames(num_frames)
        self.images = ImageLoader(transform)
        self.videos = VideoLoader(transform, num_frames=self.num_frames)
        self.fetch_timeout = float(fetch_timeout)
        self.fetch_retries = fetch_retries

    def __repr__(self) -> str:
        return (
            f"ItemLoader({self.transform!r}, num_frames={self.num_frames}, "
            f"fetch_timeout={self.fetch_timeout:g}, fetch_retries={self.fetch_retries})"
        )

    def __call__(self, item: InputItem) -> torch.Tensor:
        try:
            return self._load(item)
        except MemoryError:
            raise
        except Exception as e:  # one bad input is reported with its name, whatever the library raised
            reason = str(e) if isinstance(e, (PEError, _Unusable)) else f"{type(e).__name__}: {e}"
            raise ItemLoadError(f"cannot load {describe(item)}: {reason}") from e

    # --- by kind ------------------------------------------------------------------------------------------

    def _load(self, item: InputItem) -> torch.Tensor:
        if item.kind == "bad":
            raise _Unusable(item.problem or "it was found unusable when the inputs were listed")
        if item.kind == "file":
            return self._video_file(item.ref) if _is_video_name(item.ref) else self._image(item.ref)
        if item.kind == "bytes":
            if not item.data:
                raise _Unusable("it holds no image bytes")
            return self._image(item.data)
        if item.kind == "url":
            data = fetch_url(item.ref, timeout=self.fetch_timeout, retries=self.fetch_retries)
            name = PurePosixPath(urlsplit(item.ref).path).name or item.ref
            return self._video_bytes([data], name) if _is_video_name(name) else self._image(data)
        if item.kind == "member":
            if _is_video_name(item.name):
                return self._video_bytes(_member_chunks(item), item.name)
            return self._image(b"".join(_member_chunks(item)))
        raise _Unusable(f"unknown item kind {item.kind!r}")

    def _image(self, source: str | bytes) -> torch.Tensor:
        """A path or encoded bytes -> ``(3, H, W)`` (``embedding.ImageLoader``)."""
        return self.images(source)

    def _video_file(self, path: str) -> torch.Tensor:
        """A video file -> ``(n, 3, H, W)`` (``embedding.VideoLoader``)."""
        return self.videos(path)

    def _video_bytes(self, chunks: Iterator[bytes] | list[bytes], name: str) -> torch.Tensor:
        """Video bytes -> ``(n, 3, H, W)`` (``VideoLoader.load_bytes``: through a temporary file, removed
        afterwards; errors name ``name``, not the temporary file)."""
        return self.videos.load_bytes(chunks, name)
