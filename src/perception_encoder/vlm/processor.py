"""Prompts with image/video placeholders -> token ids, labels and pixels for ``VisionLanguageModel``.

Each placeholder (``<image>`` / ``<video>`` by default) is expanded to as many copies of its token as the
medium has visual tokens, so the language model's sequence has one position per projected feature:

* a tiled image: ``(1 + grid_w * grid_h) * tokens_per_tile`` (thumbnail first; see ``tiling.tile_image``);
  ``max_tiles=1`` gives the single squashed image (PerceptionLM's "vanilla" mode);
* a native-resolution image: ``(H / p / r) * (W / p / r)`` tokens for its own ``H x W``;
* a video: ``frames * tokens_per_tile``, every frame squashed bicubic to the tile size, at most
  ``max_frames`` (32 in PerceptionLM) frames.

``tokens_per_tile = (tile / p / r)^2`` for patch size ``p`` and pooling ratio ``r``: 256 for 448 px, p=14,
r=2. Labels are -100 on the prompt (visual positions included) and on padding, so the loss counts only
answer tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..tiling import ImageLike, as_rgb_image, native_resolution_image, tile_image
from ..transforms import DEFAULT_MEAN, DEFAULT_STD, normalize_tensor, resize_frames, to_normalized_tensor

__all__ = [
    "ImageItem",
    "VideoItem",
    "VLMSample",
    "VLMBatch",
    "VLMProcessor",
    "video_frame_indices",
]

IGNORE_INDEX = -100
MediaType = Literal["image", "video"]


@dataclass
class ImageItem:
    """An image with its own layout, overriding the processor's defaults.

    ``max_tiles``: tile budget for this image (``1``: the squashed image alone). ``native=True``: no tiling,
    the image at about its own resolution (``max_tokens`` / ``max_side`` bound its size; see
    ``tiling.native_resolution_size``).
    """

    image: ImageLike
    max_tiles: int | None = None
    native: bool = False
    max_tokens: int | None = None
    max_side: int | None = None


@dataclass
class VideoItem:
    """A video: a file path, a folder of frame images, a sequence of frames (paths / PIL / uint8 arrays), or
    a uint8 array/tensor ``(T, H, W, 3)`` or ``(T, 3, H, W)``; ``max_frames`` overrides the processor's limit.

    Frames are kept by PerceptionLM's rule (``video_frame_indices``): for a file, candidates one second
    apart, at most ``max_frames`` of them, never a repeat; frames given directly are all kept when they
    fit, else ``max_frames`` uniformly spread ones."""

    frames: Any
    max_frames: int | None = None


@dataclass
class VLMSample:
    """One prepared example: token ids, labels, and the pixels of its media in placeholder order."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    media_types: list[MediaType] = field(default_factory=list)


class VLMBatch(dict):
    """The model's inputs: ``input_ids``, ``attention_mask`` (``(B, L)`` long), ``labels`` (when answers were
    given), ``pixel_values`` (a list, one ``(chunks, 3, H, W)`` float tensor per medium, in order of
    appearance over the batch) and ``media_types`` (``"image"`` / ``"video"`` per medium).

    Use as ``model(**batch)`` or ``model.generate(**batch)``.
    """

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLMBatch:
        """Move tensors to ``device``; ``dtype`` applies to pixels only (ids stay integer)."""
        out = VLMBatch(self)
        for key in ("input_ids", "attention_mask", "labels"):
            if key in out:
                out[key] = out[key].to(device)
        out["pixel_values"] = [p.to(device=device, dtype=dtype or p.dtype) for p in out["pixel_values"]]
        return out


def _uniform(m: int, n: int) -> list[int]:
    """``n`` of ``m`` positions at ``round(i * (m - 1) / (n - 1))`` (first and last kept; Python's rounding)."""
    stride = (m - 1) / (n - 1) if n > 1 else 0
    return [int(round(i * stride)) for i in range(n)]


def video_frame_indices(
    total_frames: int, max_frames: int, fps: float | None = None, sampling_fps: float = 1.0
) -> list[int]:
    """Which of ``total_frames`` frames a video keeps, by PerceptionLM's own loader's rule:

    candidates every ``round(fps / sampling_fps)`` frames from the first frame to the last (every frame
    when ``fps`` is unknown, e.g. frames given as images); more candidates than ``max_frames`` ->
    ``max_frames`` of them, uniformly at ``round(i * (m - 1) / (n - 1))``; fewer -> that same uniform rule
    over all frames, with ``min(total_frames, max_frames)`` frames (never a repeat); as many -> all of them.
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, int) or total_frames < 1:
        raise ValueError(f"total_frames must be a positive int, got {total_frames!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    if not sampling_fps > 0:
        raise ValueError(f"sampling_fps must be positive, got {sampling_fps!r}")
    stride = max(1, int(round(fps / sampling_fps))) if fps else 1
    candidates = list(range(0, total_frames, stride))
    if len(candidates) > max_frames:
        return [candidates[i] for i in _uniform(len(candidates), max_frames)]
    if len(candidates) < max_frames:
        return _uniform(total_frames, min(total_frames, max_frames))
    return candidates


def ensure_special_tokens(tokenizer: Any, tokens: Iterable[str]) -> list[int]:
    """Make each token an added special token of ``tokenizer`` (so it is never split or merged with its
    neighbours); returns their ids."""
    from transformers import AddedToken

    ids = []
    for token in tokens:
        if token not in tokenizer.get_added_vocab():
            tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        if tokenizer(token, add_special_tokens=False)["input_ids"] != [
            tokenizer.convert_tokens_to_ids(token)
        ]:
            raise ValueError(f"the tokenizer cannot keep placeholder {token!r} as one token")
        ids.append(tokenizer.convert_tokens_to_ids(token))
    return ids


class VLMProcessor:
    """Builds ``VLMBatch``es from (prompt, answer, images, videos).

    Args:
        tokenizer: a ``transformers`` tokenizer; the placeholders are added to it as special tokens when
            missing (resize the language model's embeddings afterwards -- ``VisionLanguageModel`` does).
        patch_size: the vision tower's patch size ``p``.
        tile_size: the side of a tile / video frame in pixels (the vision tower's image size).
        pooling_ratio: the projector's pooling ratio ``r``.
        max_tiles: default tile budget per image (36 in PerceptionLM's last stage; 1 = no tiles).
        max_frames: default frame limit per video (32 in PerceptionLM).
        image_token, video_token: the placeholder strings.
        native_max_tokens, native_max_side: default limits for native-resolution images.
        add_eos: end each answer with the tokenizer's EOS token (so the model learns to stop).
        max_length: refuse samples longer than this many tokens (``ValueError``); ``None`` = no limit.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        patch_size: int = 14,
        tile_size: int = 448,
        pooling_ratio: int = 2,
        max_tiles: int = 36,
        max_frames: int = 32,
        image_token: str = "<image>",
        video_token: str = "<video>",
        native_max_tokens: int | None = None,
        native_max_side: int | None = None,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        add_eos: bool = True,
        max_length: int | None = None,
    ) -> None:
        if image_token == video_token:
            raise ValueError(f"image_token and video_token must differ, both are {image_token!r}")
        if tile_size % (patch_size * pooling_ratio):
            raise ValueError(
                f"tile_size {tile_size} must be a multiple of patch_size * pooling_ratio = {patch_size * pooling_ratio}"
            )
        if max_frames < 1 or max_tiles < 1:
            raise ValueError(f"max_frames and max_tiles must be >= 1, got {max_frames}, {max_tiles}")
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.tile_size = tile_size
        self.pooling_ratio = pooling_ratio
        self.max_tiles = max_tiles
        self.max_frames = max_frames
        self.image_token = image_token
        self.video_token = video_token
        self.native_max_tokens = native_max_tokens
        self.native_max_side = native_max_side
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.add_eos = add_eos
        self.max_length = max_length
        self.image_token_id, self.video_token_id = ensure_special_tokens(
            tokenizer, (image_token, video_token)
        )
        self._split = re.compile(f"({re.escape(image_token)}|{re.escape(video_token)})")

    # --- counts ----------------------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        """The id used for padding: the tokenizer's pad token, else EOS, else 0."""
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        return 0

    def tokens_per_chunk(self, height: int | None = None, width: int | None = None) -> int:
        """Visual tokens for one ``height x width`` input square/image (default: one tile)."""
        height = self.tile_size if height is None else height
        width = self.tile_size if width is None else width
        unit = self.patch_size * self.pooling_ratio
        return (height // unit) * (width // unit)

    def num_media_tokens(self, pixels: torch.Tensor) -> int:
        """Visual tokens for one medium's pixels ``(chunks, 3, H, W)``."""
        return pixels.shape[0] * self.tokens_per_chunk(pixels.shape[-2], pixels.shape[-1])

    # --- media -----------------------------------------------------------------------------------------

    def prepare_image(self, image: ImageLike | ImageItem) -> torch.Tensor:
        """An image -> pixels ``(chunks, 3, H, W)``: thumbnail + tiles, or one native-resolution image."""
        item = image if isinstance(image, ImageItem) else ImageItem(image)
        if item.native:
            pixels = native_resolution_image(
                item.image,
                self.patch_size,
                max_side=item.max_side if item.max_side is not None else self.native_max_side,
                max_tokens=item.max_tokens if item.max_tokens is not None else self.native_max_tokens,
                pool=self.pooling_ratio,
                mean=self.mean,
                std=self.std,
            )
            return pixels.unsqueeze(0)
        max_tiles = item.max_tiles if item.max_tiles is not None else self.max_tiles
        tiles, _ = tile_image(item.image, max_tiles, self.tile_size, self.mean, self.std)
        return tiles

    def _frames(self, video: Any, max_frames: int) -> torch.Tensor | list[Image.Image]:
        """The kept frames of a video: a uint8 tensor ``(n, 3, H, W)`` for decoded video (a file, an array or
        a tensor), or RGB PIL images for frames given as images (paths, PIL images, a folder of frames)."""
        if isinstance(video, (str, os.PathLike)):
            from ..video import list_frame_files, load_frames, video_info

            if os.path.isdir(video):
                video = list_frame_files(video)  # a folder of frame images
            else:  # a video file: only the frames PerceptionLM's rule keeps are decoded
                fps = video_info(video).fps
                frames = load_frames(video, lambda total: video_frame_indices(total, max_frames, fps))
                return frames.permute(0, 3, 1, 2)
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(video)
        if isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.dtype != torch.uint8:
                raise ValueError(
                    f"a video tensor must be uint8 (T, H, W, 3) or (T, 3, H, W), got {video.dtype} {tuple(video.shape)}"
                )
            channels_first = video.shape[-1] not in (1, 3) and video.shape[1] in (1, 3)
            if not channels_first:
                video = video.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
            if video.shape[1] not in (1, 3):
                raise ValueError(f"a video tensor needs 1 or 3 channels, got shape {tuple(video.shape)}")
            if len(video) == 0:
                raise ValueError("a video has no frames")
            video = video.cpu()[video_frame_indices(len(video), max_frames)]
            return video.expand(-1, 3, -1, -1) if video.shape[1] == 1 else video
        if not isinstance(video, Sequence) or isinstance(video, (str, bytes)):
            raise TypeError(
                "a video must be a path, a sequence of frames or a uint8 array/tensor, "
                f"got {type(video).__name__}"
            )
        if len(video) == 0:
            raise ValueError("a video has no frames")
        return [as_rgb_image(video[i]) for i in video_frame_indices(len(video), max_frames)]

    def prepare_video(self, video: Any) -> torch.Tensor:
        """A video -> pixels ``(frames, 3, S, S)``: each kept frame squashed bicubic to the tile size, as
        PerceptionLM does: decoded video as a uint8 tensor (``transforms.resize_frames``: torch's bicubic
        with antialiasing, rounded back to uint8), frames given as images with Pillow's bicubic."""
        item = video if isinstance(video, VideoItem) else VideoItem(video)
        max_frames = item.max_frames if item.max_frames is not None else self.max_frames
        s = self.tile_size
        frames = self._frames(item.frames, max_frames)
        if isinstance(frames, torch.Tensor):
            unit = resize_frames(frames, (s, s)).float().div(255)
            return torch.stack([normalize_tensor(f, self.mean, self.std) for f in unit])
        return torch.stack(
            [to_normalized_tensor(f.resize((s, s), Image.BICUBIC), self.mean, self.std) for f in frames]
        )

    # --- text ------------------------------------------------------------------------------------------

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def prepare_sample(
        self,
        prompt: str,
        answer: str | None = None,
        images: Sequence[ImageLike | ImageItem] | None = None,
        videos: Sequence[Any] | None = None,
    ) -> VLMSample:
        """Tokenise one example, expanding placeholders in order of appearance.

        ``images`` / ``videos`` are consumed by the ``<image>`` / ``<video>`` placeholders in order; their
        counts must match. The prompt gets the tokenizer's special tokens (e.g. BOS); the answer (when
        given) follows it, plus EOS when ``add_eos``, and only its tokens carry labels.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        images, videos = list(images or []), list(videos or [])
        parts = self._split.split(prompt)
        n_img = parts.count(self.image_token)
        n_vid = parts.count(self.video_token)
        if n_img != len(images) or n_vid != len(videos):
            raise ValueError(
                f"the prompt has {n_img} {self.image_token} and {n_vid} {self.video_token} placeholders, "
                f"but {len(images)} images and {len(videos)} videos were given"
            )
        pixel_values: list[torch.Tensor] = []
        media_types: list[MediaType] = []
        expanded: list[str] = []
        img_iter, vid_iter = iter(images), iter(videos)
        for part in parts:
            if part == self.image_token:
                pixels, kind, token = self.prepare_image(next(img_iter)), "image", self.image_token
            elif part == self.video_token:
                pixels, kind, token = self.prepare_video(next(vid_iter)), "video", self.video_token
            else:
                expanded.append(part)
                continue
            pixel_values.append(pixels)
            media_types.append(kind)
            expanded.append(token * self.num_media_tokens(pixels))
        ids = self._ids("".join(expanded), special=True)
        expected = sum(self.num_media_tokens(p) for p in pixel_values)
        found = sum(1 for i in ids if i in (self.image_token_id, self.video_token_id))
        if found != expected:
            raise ValueError(
                f"the tokenizer turned the expanded prompt into {found} placeholder tokens, expected {expected}"
            )
        labels = [IGNORE_INDEX] * len(ids)
        if answer is not None:
            if not isinstance(answer, str):
                raise TypeError(f"answer must be a str, got {type(answer).__name__}")
            if self._split.search(answer):
                raise ValueError("an answer must not contain image/video placeholders")
            answer_ids = self._ids(answer, special=False)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if self.add_eos and eos is not None:
                answer_ids.append(int(eos))
            ids = ids + answer_ids
            labels = labels + answer_ids
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"the sample has {len(ids)} tokens, more than max_length={self.max_length}")
        return VLMSample(ids, labels, pixel_values, media_types)

    def collate(
        self, samples: Sequence[VLMSample], padding_side: Literal["left", "right"] = "right"
    ) -> VLMBatch:
        """Pad samples to one length: ``pad_token_id`` / attention 0 / label -100 on the padding side."""
        if not samples:
            raise ValueError("no samples to collate")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(s.input_ids) for s in samples)
        b = len(samples)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s.input_ids)
            span = slice(length - n, length) if padding_side == "left" else slice(0, n)
            input_ids[i, span] = torch.tensor(s.input_ids, dtype=torch.long)
            attention[i, span] = 1
            labels[i, span] = torch.tensor(s.labels, dtype=torch.long)
        batch = VLMBatch(
            input_ids=input_ids,
            attention_mask=attention,
            pixel_values=[p for s in samples for p in s.pixel_values],
            media_types=[t for s in samples for t in s.media_types],
        )
        if any(label != IGNORE_INDEX for s in samples for label in s.labels):
            batch["labels"] = labels
        return batch

    def __call__(
        self,
        prompts: str | Sequence[str],
        answers: str | Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
        *,
        padding_side: Literal["left", "right"] | None = None,
    ) -> VLMBatch:
        """Prepare a batch.

        Args:
            prompts: one prompt, or a list of prompts.
            answers: the target text per prompt (training), or ``None`` (generation).
            images, videos: for one prompt, a list of media; for a list of prompts, a list with one list
                (or ``None``) per prompt. Items are raw media or ``ImageItem`` / ``VideoItem``.
            padding_side: default ``"left"`` without answers (generation needs the prompts to end together)
                and ``"right"`` with them.
        """
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts)
        n = len(prompt_list)

        def per_prompt(value: Any, name: str) -> list[Any]:
            if value is None:
                return [None] * n
            if single:
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    value = [value]  # one medium for one prompt
                return [value]
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != n:
                raise ValueError(f"{name} must be a list with one entry per prompt ({n} prompts)")
            return list(value)

        answer_list = [answers] if single else per_prompt(answers, "answers")
        image_lists = per_prompt(images, "images")
        video_lists = per_prompt(videos, "videos")
        samples = [
            self.prepare_sample(p, a, im, vi)
            for p, a, im, vi in zip(prompt_list, answer_list, image_lists, video_lists, strict=True)
        ]
        if padding_side is None:
            padding_side = "left" if all(a is None for a in answer_list) else "right"
        return self.collate(samples, padding_side)
