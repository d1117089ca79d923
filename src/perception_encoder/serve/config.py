"""What a server accepts and how it batches: ``ServeConfig``, every bound in one place (``pe serve`` options).

Each limit bounds one request or the work waiting, so that no client can make the server hold more than
it was told to: the body's bytes, the items of a request, an image's pixels, a text's characters, the
labels and prompts of a classification, the rows of a search, and the items admitted but not yet in a
model batch (beyond which a request gets 429).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ..limits import MAX_BATCH_SIZE, MAX_FRAMES


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches and what it accepts (see ``pe serve --help`` for each).

    Batching: ``max_batch_size`` items per model batch, taken as soon as that many wait, else
    ``max_wait_ms`` after the first one arrived. ``max_queue``: items per modality admitted (decoding or
    waiting) and not yet in a batch; a request that would pass it gets 429 with ``Retry-After``.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_items: int = 256
    max_body_bytes: int = 32 << 20
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 100_000
    max_labels: int = 1000
    max_prompts: int = 4096
    max_k: int = 1000
    frames: int = 8
    allow_urls: bool = False
    allow_private_urls: bool = False
    url_timeout: float = 10.0
    api_key: str | None = None
    decode_threads: int = min(4, os.cpu_count() or 1)
    thumbnail_size: int = 256

    def __post_init__(self) -> None:
        bounds = {
            "max_batch_size": (1, MAX_BATCH_SIZE),
            "max_queue": (1, 1 << 24),
            "max_items": (1, 1 << 20),
            "max_body_bytes": (1024, 1 << 40),
            "max_image_pixels": (1, 1 << 40),
            "max_text_chars": (1, 1 << 30),
            "max_labels": (1, 1 << 20),
            "max_prompts": (1, 1 << 24),
            "max_k": (1, 1 << 20),
            "frames": (1, MAX_FRAMES),
            "decode_threads": (1, 256),
            "thumbnail_size": (16, 4096),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in bounds:
                lo, hi = bounds[f.name]
                if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                    raise ValueError(f"{f.name} must be an integer from {lo:,} to {hi:,}, got {value!r}")
        for name in ("max_wait_ms", "url_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600_000:
                raise ValueError(f"{name} must be a number from 0 to 3,600,000, got {value!r}")
        if self.max_queue < self.max_items:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be at least max_items ({self.max_items}): a request of "
                "max_items items could never be admitted"
            )
        if self.allow_private_urls and not self.allow_urls:
            raise ValueError("allow_private_urls needs allow_urls (URLs are not fetched at all without it)")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty; give a non-empty key or none")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0
