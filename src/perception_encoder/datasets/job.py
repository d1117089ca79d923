"""What a dataset job is, shared by both engines: its options, the model it loads, the settings recorded in
the manifest, and preparing the output folder (start, resume, or refuse).

A ``Job`` is plain data (picklable), so a Ray worker can rebuild the same model and loaders from it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import remove_stale_temps
from ..embedding.encoders import FeatureSpec
from .layout import MANIFEST, SHARDS, SKIPPED, default_shard_size
from .manifest import DatasetError, Manifest, Settings, read_manifest, settings_difference, write_manifest
from .shards import remove_dataset_files, written_shards


@dataclass(frozen=True)
class Job:
    """A dataset job's options (see ``embed_dataset`` for each). ``model``: a registered name or a checkpoint
    path; ``checkpoint``: other weights for that name (``pe.load(model, checkpoint=checkpoint)``)."""

    inputs: tuple[str, ...]
    model: str
    checkpoint: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    features: FeatureSpec = field(default_factory=FeatureSpec)
    num_frames: int = 8
    normalize: bool = False
    image_size: int | tuple[int, int] | None = None
    high_bit_depth: str = "clip"
    half: bool = False
    shard_size: int | None = None
    batch_size: int = 32
    num_workers: int = 0
    image_column: str | None = None
    id_column: str | None = None
    fetch_timeout: float = 30.0
    fetch_retries: int = 3

    def load_model(self, device: str | None = None) -> Any:
        from ..factory import load

        return load(self.model, checkpoint=self.checkpoint, device=device or self.device, dtype=self.dtype)

    def input_size(self, model: Any) -> tuple[int, int]:
        from ..embedding.encoders import vision_tower

        size = self.image_size or vision_tower(model).config.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def transform(self, model: Any) -> Any:
        from ..transforms import image_transform

        return image_transform(self.input_size(model), high_bit_depth=self.high_bit_depth)

    def loader(self, model: Any) -> Any:
        """The picklable ``InputItem`` -> pixels function of this job."""
        from .loading import ItemLoader

        return ItemLoader(
            self.transform(model),
            num_frames=self.num_frames,
            fetch_timeout=self.fetch_timeout,
            fetch_retries=self.fetch_retries,
        )

    def settings(self, model: Any) -> Settings:
        """What the manifest records for this job run with ``model`` (its weights hashed here)."""
        from ..embedding.encoders import vision_tower
        from ..factory import checkpoint_sha256

        visual = vision_tower(model)
        pooled = self.features.is_pooled and visual.config.pool_type != "none"
        dim = visual.config.output_dim if pooled else visual.config.width
        storage = "float16" if self.half else "float32"
        return Settings(
            model=self.model,
            checkpoint=self.checkpoint,
            checkpoint_sha256=checkpoint_sha256(self.model, self.checkpoint),
            dtype=self.dtype,
            pool=self.features.pool,
            layer=None if self.features.is_pooled else self.features.layer,
            normalize=self.normalize,
            frames=self.num_frames,
            image_size=self.input_size(model),
            resize="squash",
            high_bit_depth=self.high_bit_depth,
            storage=storage,
            dim=int(dim),
            shard_size=self.shard_size or default_shard_size(int(dim), 2 if self.half else 4),
            inputs=tuple(self.inputs),
            image_column=self.image_column,
            id_column=self.id_column,
        )


def resolve_inputs(inputs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Inputs as the manifest records them: absolute paths for local names (so a job resumed from another
    folder is the same job), URLs and patterns as given."""
    out = []
    for raw in inputs:
        text = os.fspath(raw)
        out.append(text if "://" in text or text.startswith("/") else os.path.abspath(text))
    return tuple(out)


def prepare_output(root: str | os.PathLike, settings: Settings, *, overwrite: bool = False) -> Manifest:
    """The manifest to continue: a fresh one for a new (or overwritten) dataset, the existing one (with any
    shard written after its last update) when the settings are equal; else ``DatasetError`` naming what
    differs. Refuses a folder holding other things than a dataset."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"output {str(root)!r} is a file; a dataset is a folder")
    # temporary files of a job killed while writing: never complete, never read
    for folder, names in (
        (root, r"manifest\.json"),
        (root / SHARDS, r"part-\d+\.parquet"),
        (root / SKIPPED, r"part-\d+\.parquet"),
    ):
        remove_stale_temps(folder, names)
    has_manifest = (root / MANIFEST).is_file()
    if has_manifest and overwrite:
        remove_dataset_files(root)
        has_manifest = False
    if not has_manifest:
        ours = {MANIFEST, SHARDS, SKIPPED}
        others = sorted(p.name for p in root.iterdir() if p.name not in ours) if root.is_dir() else []
        if others:
            raise DatasetError(
                f"output folder {str(root)!r} is not empty and not an embedding dataset (it holds {others[0]!r}"
                f"{' and more' if len(others) > 1 else ''}); choose a new folder"
            )
        if root.is_dir() and any(
            (root / d).is_dir() and any((root / d).iterdir()) for d in (SHARDS, SKIPPED)
        ):
            remove_dataset_files(root)  # shards of a job killed before its first manifest: not trustworthy
        root.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(settings)
        write_manifest(root, manifest)
        return manifest
    manifest = read_manifest(root)
    diff = settings_difference(settings, manifest.settings)
    if diff:
        raise DatasetError(
            f"{root} was made with other settings ({'; '.join(diff)}); run the same command to resume it, "
            "or --overwrite to start afresh"
        )
    on_disk = written_shards(root)
    for k, record in on_disk.items():  # written by a job killed before it updated the manifest
        if manifest.shard(k) is None:
            manifest.shards.append(record)
    manifest.shards = [s for s in manifest.shards if s.index in on_disk]
    manifest.complete = False
    write_manifest(root, manifest)
    return manifest


def with_device(job: Job, device: str) -> Job:
    return dataclasses.replace(job, device=device)
