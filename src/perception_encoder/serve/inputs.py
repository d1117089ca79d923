"""Turning the items of a request into model inputs, with the server's limits (runs in the decode pool).

An image or video item is a ``data:<type>;base64,`` URI, bare base64 (whitespace, as ``base64`` wraps its
lines, is ignored), or an ``http(s)`` URL (``urls.UrlPolicy``). Decoding goes through the library: images
through ``images.load_image`` (refused from the header beyond ``max_image_pixels``, before any pixel is
decoded) and the reference ``image_transform`` at the model's size, videos through ``VideoLoader``
(frames sampled as ``pe embed`` samples them; frames of more pixels refused from the header). Every
problem is a 4xx ``APIError`` naming the item (``input[3]``) and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import torch
from PIL import Image

from ..embedding.video import VideoLoader
from ..errors import PEError
from ..images import load_image
from ..transforms import image_transform, to_rgb
from .config import ServeConfig
from .errors import APIError, bad_item
from .urls import UrlPolicy, is_url

_DATA_URI = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")
#: Video containers by the MIME type of a data URI (the decoder also reads the content itself).
_VIDEO_SUFFIXES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
}


def is_data_uri(item: str) -> bool:
    return item[:5].lower() == "data:"


class Decoder:
    """Request items -> pixels, within ``config``'s limits. ``image_size``: the model's input size."""

    def __init__(self, config: ServeConfig, image_size: int | tuple[int, int]) -> None:
        self.config = config
        self.urls = UrlPolicy(
            config.allow_urls, config.allow_private_urls, config.url_timeout, config.max_body_bytes
        )
        self.transform = image_transform(image_size)
        self.videos = VideoLoader(self.transform, config.frames, max_pixels=config.max_image_pixels)

    # --- bytes --------------------------------------------------------------------------------------------

    def item_bytes(self, item: str, param: str) -> tuple[bytes, str | None]:
        """The bytes an item stands for and its MIME type when a data URI says it."""
        if not item.strip():
            raise bad_item(param, "is empty", "empty_input")
        if is_url(item):
            return self.urls.fetch(item.strip(), param), None
        mime = None
        text = item
        if is_data_uri(item):
            m = _DATA_URI.match(item)
            if m is None or not m.group(3):
                raise bad_item(
                    param, "a data URI must be base64 (data:<type>;base64,<data>)", "invalid_data_uri"
                )
            mime = (m.group(1) or "").lower() or None
            text = item[m.end() :]
        try:
            data = base64.b64decode(_WHITESPACE.sub(b"", text.encode("ascii")), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as e:
            raise bad_item(param, f"is not valid base64 ({e})", "invalid_base64") from None
        if not data:
            raise bad_item(param, "holds no bytes", "empty_input")
        return data, mime

    # --- images and videos --------------------------------------------------------------------------------

    def image(self, item: str, param: str) -> Image.Image:
        """A decoded image (its original mode), within the pixel limit."""
        data, _ = self.item_bytes(item, param)
        try:
            return load_image(data, max_pixels=self.config.max_image_pixels)
        except PEError as e:
            raise bad_item(param, str(e), "invalid_image") from None

    def pixels(self, item: str, param: str) -> torch.Tensor:
        """``(3, S, S)``: the reference preprocessing of the item's image at the model's size."""
        return self.transform(self.image(item, param))

    def rgb_pixels(self, item: str, param: str, transform: Any) -> torch.Tensor:
        """``(3, H, W)`` through ``transform`` after converting to RGB first, as ``dense.patch_features``
        reads an image."""
        return transform(to_rgb(self.image(item, param)))

    def video(self, item: str, param: str) -> torch.Tensor:
        """``(n, 3, S, S)``: up to ``frames`` frames of the item's video, each through the transform."""
        data, mime = self.item_bytes(item, param)
        try:
            return self.videos.load_bytes([data], param + _VIDEO_SUFFIXES.get(mime or "", ""))
        except PEError as e:
            raise bad_item(param, str(e), "invalid_video") from None
        except ImportError as e:
            raise APIError(
                400, f"{param}: this server cannot decode video ({e})", code="video_unsupported"
            ) from None
