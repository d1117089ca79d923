"""Bulk embedding of image and video files: what ``pe embed`` and ``pe classify`` run.

Images and videos may be mixed; bad files are skipped and reported, never fatal. Videos are embedded as the
mean of ``num_frames`` uniformly sampled frame embeddings (SPEC §5).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .eval.embed import (
    FeatureSpec,
    ImageLoader,
    Skipped,
    VideoLoader,
    embed_files,
    feature_encoder,
    vision_tower,
)
from .images import iter_image_files
from .transforms import image_transform


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
