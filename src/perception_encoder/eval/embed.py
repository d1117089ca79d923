"""Batch embedding of files for evaluation: bad files are reported and skipped, never fatal.

Every file is loaded on its own (optionally in DataLoader workers); a file that fails to load becomes a
:class:`Skipped` record and the rest of its batch goes on. Embeddings come back in input order, with the
input indices of the files that made it, so labels and captions can be lined up afterwards.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import PEError

#: Text prompts are encoded in batches of this size whatever the image batch size, so the text side of
#: every metric is the same for any ``batch_size``.
TEXT_BATCH_SIZE = 256


@dataclass
class Skipped:
    """A file that could not be used, and why."""

    path: str
    reason: str


@dataclass
class Embedded:
    """Embeddings of the files that loaded: ``values[j]`` belongs to input file ``index[j]``."""

    values: torch.Tensor  # (M, D) float32, CPU
    index: list[int]
    skipped: list[Skipped]


# --- loaders: path -> tensor (picklable, so DataLoader workers can use them) -------------------------------


class ImageLoader:
    """path -> ``(3, H, W)`` through an image transform (which reads the file with ``load_image``)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, path: Path) -> torch.Tensor:
        return self.transform(path)


class VideoLoader:
    """path -> ``(N, 3, H, W)``: ``num_frames`` frames sampled as the core library does, each transformed."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], num_frames: int = 8) -> None:
        self.transform = transform
        self.num_frames = num_frames

    def __call__(self, path: Path) -> torch.Tensor:
        from ..video import load_video

        frames = load_video(path, num_frames=self.num_frames)  # uint8 (N, H, W, 3)
        return torch.stack([self.transform(frame.numpy()) for frame in frames])


def _reason(exc: BaseException) -> str:
    # our loaders' errors already name the file and the problem; others get their type for context
    return str(exc) if isinstance(exc, PEError) else f"{type(exc).__name__}: {exc}"


class _Files(Dataset):
    def __init__(self, paths: Sequence[Path], load: Callable[[Path], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.load(self.paths[i]), None
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a bad file must not stop the run: report it and go on
            return i, None, _reason(exc)


def _keep_list(items: list) -> list:
    return items


def _digest(x: torch.Tensor) -> bytes:
    """A content key of a loaded item (shape, dtype and values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


# --- model pieces -----------------------------------------------------------------------------------------


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision transformer of a CLIP model (``model.visual``), or the model itself if it is one."""
    return getattr(model, "visual", model)


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def require_clip(model: torch.nn.Module, task: str) -> None:
    """Raise a clear error when ``model`` has no text tower."""
    if not (hasattr(model, "encode_text") and hasattr(model, "encode_image")):
        raise TypeError(
            f"{task} needs a CLIP model with a text tower (PE-Core); got {type(model).__name__}, "
            "a vision-only model (PE-Lang / PE-Spatial can be evaluated with linear-probe or knn)"
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Which frozen features a probe reads.

    ``pool="pooled"``: the model's own embedding (PE-Core: attention-pooled and projected; a token model
    without pooling: the mean of its output patch tokens). ``pool="mean"``: the mean of the patch tokens
    (CLS excluded) after block ``layer``. ``pool="cls"``: the CLS token after block ``layer``. Block
    features are taken before ``ln_post`` (SPEC: "features at layer k"); ``layer`` is a Python-style block
    index (0 = first block, -1 = last).
    """

    pool: Literal["pooled", "mean", "cls"] = "pooled"
    layer: int = -1

    def describe(self) -> str:
        return "pooled embedding" if self.pool == "pooled" else f"{self.pool} of block {self.layer}"


def feature_encoder(
    model: torch.nn.Module, spec: FeatureSpec = FeatureSpec()
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function pixels ``(B, 3, H, W)`` -> features ``(B, D)`` for ``spec``; checks the layer up front."""
    from ..layers.transformer import resolve_layer

    visual = vision_tower(model)
    prefix = int(visual.config.use_cls_token)
    if spec.pool not in ("pooled", "mean", "cls"):
        raise ValueError(f"feature pool must be 'pooled', 'mean' or 'cls', got {spec.pool!r}")
    if spec.pool == "pooled":
        if visual.config.pool_type == "none":

            def encode(x: torch.Tensor) -> torch.Tensor:
                return visual(x)[:, prefix:].mean(dim=1)

            return encode
        return visual
    resolve_layer(spec.layer, visual.depth)  # IndexError naming the valid range
    if spec.pool == "cls" and not prefix:
        raise ValueError("this model has no CLS token; use pool 'mean' for block features")

    def encode_block(x: torch.Tensor) -> torch.Tensor:
        tokens = visual.forward_features(x, layer=spec.layer)
        return tokens[:, 0] if spec.pool == "cls" else tokens[:, prefix:].mean(dim=1)

    return encode_block


# --- the loops --------------------------------------------------------------------------------------------


@torch.inference_mode()
def embed_files(
    paths: Sequence[str | os.PathLike],
    load: Callable[[Path], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embedding",
) -> Embedded:
    """Load every file with ``load`` and encode the good ones in batches of up to ``batch_size``.

    ``load(path)`` returns one item (``(3, H, W)`` for images, ``(N, 3, H, W)`` for videos); ``encode`` maps
    a stacked batch to ``(B, D)``. Returns the embeddings (float32 on the CPU) in input order, the input
    indices that made it and the skipped files with reasons.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    loader = DataLoader(
        _Files(paths, load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep_list,
    )
    rows: dict[int, torch.Tensor] = {}  # output position -> embedding
    copies: list[tuple[int, int]] = []  # (output position, position of the identical input first seen)
    first: dict[bytes, int] = {}
    index: list[int] = []
    skipped: list[Skipped] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc=desc, unit="file", file=sys.stderr, leave=False)
    for items in loader:
        skipped += [Skipped(str(paths[i]), err) for i, _, err in items if err is not None]
        fresh: list[tuple[int, torch.Tensor]] = []
        for i, x, err in items:
            if err is not None:
                continue
            pos = len(index)
            index.append(i)
            # Identical inputs (duplicate files) share one embedding: the floating-point result of a forward
            # pass depends slightly on the batch it is in, and exact ties keep every metric independent of
            # the batch size (ties are broken by position).
            key = _digest(x)
            if key in first:
                copies.append((pos, first[key]))
            else:
                first[key] = pos
                fresh.append((pos, x))
        if fresh:
            batch = torch.stack([x for _, x in fresh]).to(device)
            for (pos, _), emb in zip(fresh, encode(batch).float().cpu(), strict=True):
                rows[pos] = emb
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    for pos, src in copies:
        rows[pos] = rows[src]
    out = torch.stack([rows[p] for p in range(len(index))]) if index else torch.empty(0, 0)
    return Embedded(out, index, skipped)


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    texts: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    batch_size: int = TEXT_BATCH_SIZE,
) -> torch.Tensor:
    """Normalised text embeddings ``(T, D)`` (float32, CPU); ``tokenizer`` defaults to the CLIP tokenizer."""
    if tokenizer is None:
        from ..tokenization import tokenizer as make_tokenizer

        tokenizer = make_tokenizer(model.text.context_length)
    device = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size])).to(device)
        out.append(model.encode_text(ids, normalize=True).float().cpu())
    if not out:
        return torch.empty(0, model.embed_dim)
    return torch.cat(out)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
