"""``embed_dataset``: one job description, run by the engine asked for (``local`` on this machine, ``ray``
on a Ray cluster)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..embedding.encoders import FeatureSpec
from .job import Job, resolve_inputs
from .local import DatasetSummary, run_local


def embed_dataset(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    features: FeatureSpec = FeatureSpec(),
    num_frames: int = 8,
    normalize: bool = False,
    image_size: int | tuple[int, int] | None = None,
    high_bit_depth: str = "clip",
    half: bool = False,
    shard_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    image_column: str | None = None,
    id_column: str | None = None,
    fetch_timeout: float = 30.0,
    fetch_retries: int = 3,
    overwrite: bool = False,
    progress: bool = False,
    engine: str = "local",
    **engine_options: Any,
) -> DatasetSummary:
    """Embed every input into the dataset folder ``out`` (``datasets.layout``), resuming a dataset made with
    the same settings, refusing one made with others (unless ``overwrite``).

    ``inputs``: files, folders (recursive), globs, WebDataset tars (brace patterns too), CSV / Parquet
    tables with a column of paths, URLs or image bytes (``image_column``; ``id_column``), videos.
    ``model`` / ``checkpoint``: as ``pe.load``. ``features``, ``num_frames``, ``normalize``, ``image_size``,
    ``high_bit_depth``: as ``embed_paths``. ``half``: store float16. ``shard_size``: inputs per shard
    (default: about 256 MB of embeddings). ``engine``: ``"local"`` or ``"ray"`` (``engine_options``:
    ``address``, ``replicas``, ``gpus_per_replica``, see ``datasets.ray_engine``).
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if not inputs:
        raise ValueError("give at least one input")
    name = os.fspath(model)
    job = Job(
        inputs=resolve_inputs([os.fspath(i) for i in inputs]),
        model=name if "://" in name or not os.path.exists(name) else os.path.abspath(name),
        checkpoint=None if checkpoint is None else os.path.abspath(os.fspath(checkpoint)),
        device=device,
        dtype=dtype,
        features=features,
        num_frames=num_frames,
        normalize=normalize,
        image_size=image_size,
        high_bit_depth=high_bit_depth,
        half=half,
        shard_size=shard_size,
        batch_size=batch_size,
        num_workers=num_workers,
        image_column=image_column,
        id_column=id_column,
        fetch_timeout=fetch_timeout,
        fetch_retries=fetch_retries,
    )
    if engine == "ray":
        from .ray_engine import run_ray

        return run_ray(job, Path(out), overwrite=overwrite, progress=progress, **engine_options)
    if engine_options:
        raise TypeError(f"options for the ray engine given to the local one: {', '.join(engine_options)}")
    return run_local(job, Path(out), overwrite=overwrite, progress=progress)
