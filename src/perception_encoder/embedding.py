"""Bulk embedding of image and video files: what ``pe embed``, ``pe classify`` and ``pe eval`` run.

Every file is loaded on its own (optionally in DataLoader workers, so decoding overlaps encoding); a file that
fails to load becomes a :class:`Skipped` record and the rest of its batch goes on. Images and videos may be
mixed; videos are embedded as the mean of ``num_frames`` uniformly sampled frame embeddings (SPEC §5).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import PEError
from .images import iter_image_files
from .transforms import image_transform


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
        from .video import load_video

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
    from .layers.transformer import resolve_layer

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


@dataclass
class EmbeddingResult:
    """``embeddings[i]`` belongs to ``paths[i]``; ``skipped`` lists the files that could not be used."""

    embeddings: torch.Tensor  # (N, D) float32
    paths: list[Path]
    skipped: list[Skipped] = field(default_factory=list)


def expand_inputs(paths: Sequence[str | os.PathLike], *, videos: bool = True) -> list[Path]:
    """Files and folders (recursively) -> files: images, and videos when ``videos`` is set."""
    from .video import VIDEO_EXTENSIONS

    found = list(iter_image_files(paths))
    if videos:
        for p in map(Path, paths):
            if p.is_dir():
                found += sorted(
                    f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
                )
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def _video_encoder(encode):
    def encode_videos(frames: torch.Tensor) -> torch.Tensor:  # (B, N, 3, H, W) -> (B, D)
        b, n = frames.shape[:2]
        return encode(frames.flatten(0, 1)).view(b, n, -1).mean(dim=1)

    return encode_videos


def embed_paths(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    layer: int | None = None,
    pool: str = "mean",
    num_frames: int = 8,
    normalize: bool = False,
    image_size: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> EmbeddingResult:
    """Embed image and video files with a CLIP model or a vision tower, or an ONNX image graph.

    Without ``layer``: the model's own embedding (PE-Core: pooled and projected; token models: the mean of
    the output patch tokens). With ``layer=k``: block ``k``'s patch tokens averaged (``pool="mean"``) or
    its CLS token (``pool="cls"``). Videos get the mean of their frame embeddings. ``normalize`` L2-normalises
    each output row (after the video mean).

    ``model`` may also be an ``export.OnnxEncoder`` of an image graph (``pe export onnx --what image``): the
    graph then encodes every image and video frame in onnxruntime, at the size it was exported for
    (``layer`` and ``image_size`` do not apply to it).
    """
    from .video import is_video_file

    if _is_onnx_encoder(model):
        encode, size, device, dtype = _onnx_image_encoder(model, layer, pool, image_size)
        transform = image_transform(size)
    else:
        visual = vision_tower(model)
        spec = FeatureSpec() if layer is None else FeatureSpec(pool=pool, layer=layer)
        encode = feature_encoder(model, spec)
        transform = image_transform(image_size or visual.config.image_size)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype

    def cast(fn):
        return lambda x: fn(x.to(device, dtype))

    files = [Path(p) for p in paths]
    groups = {
        "image": [i for i, p in enumerate(files) if not is_video_file(p)],
        "video": [i for i, p in enumerate(files) if is_video_file(p)],
    }
    rows: dict[int, torch.Tensor] = {}
    skipped: list[Skipped] = []
    for kind, idx in groups.items():
        if not idx:
            continue
        if kind == "image":
            load, fn, bs = ImageLoader(transform), cast(encode), batch_size
        else:
            load = VideoLoader(transform, num_frames=num_frames)
            fn, bs = cast(_video_encoder(encode)), max(1, batch_size // num_frames)
        out = embed_files(
            [files[i] for i in idx],
            load,
            fn,
            batch_size=bs,
            device="cpu",
            num_workers=num_workers,
            progress=progress,
            desc=f"embedding {kind}s",
        )
        skipped += out.skipped
        for j, emb in zip(out.index, out.values, strict=True):
            rows[idx[j]] = emb
    order = sorted(rows)
    if not order:
        return EmbeddingResult(torch.empty(0, 0), [], skipped)
    embs = torch.stack([rows[i] for i in order]).float()
    if normalize:
        embs = F.normalize(embs, dim=-1)
    return EmbeddingResult(embs, [files[i] for i in order], skipped)


def _is_onnx_encoder(model: object) -> bool:
    from .export.runtime import OnnxEncoder

    return isinstance(model, OnnxEncoder)


def _onnx_image_encoder(encoder, layer: int | None, pool: str, image_size: int | None):
    """(encode, image size, device, dtype) for an ONNX image graph, after checking it fits the request."""
    if encoder.what != "image":
        raise ValueError(
            f"{encoder.path.name} encodes {encoder.what}s; pe embed needs an image graph "
            "(pe export onnx --what image); videos are embedded frame by frame with it"
        )
    if layer is not None:
        raise ValueError("--layer needs the torch backend: an exported graph only gives the final embedding")
    if image_size is not None and image_size != encoder.image_size:
        raise ValueError(f"{encoder.path.name} was exported for {encoder.image_size} px, not {image_size}")
    prefix = int(encoder.config.use_cls_token)

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = encoder.encode_image(x)
        return out[:, prefix:].mean(dim=1) if out.ndim == 3 else out  # token models: mean patch token

    return encode, encoder.image_size, torch.device("cpu"), torch.float32


def save_embeddings(result: EmbeddingResult, out: str | os.PathLike) -> list[Path]:
    """Write ``.npy`` (plus ``<name>.paths.txt``, one file name per row) or ``.parquet`` (columns ``path`` and
    ``embedding``). Returns the files written."""
    import numpy as np

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    array = result.embeddings.numpy().astype(np.float32)
    names = [str(p) for p in result.paths]
    if out.suffix == ".npy":
        np.save(out, array)
        listing = out.with_suffix(".paths.txt")
        listing.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        return [out, listing]
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                "writing .parquet needs pyarrow: pip install 'perception-encoder[parquet]'"
            ) from exc
        dim = array.shape[1] if array.ndim == 2 else 0
        column = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim)
        pq.write_table(pa.table({"path": names, "embedding": column}), out)
        return [out]
    raise ValueError(f"output file {str(out)!r} must end in .npy or .parquet")
