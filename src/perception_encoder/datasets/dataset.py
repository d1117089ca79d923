"""Reading an embedding dataset, and embedding queries the way its rows were embedded.

ds = pe.open_dataset("emb/")
len(ds), ds.dim, ds.settings.model
table = ds.table(["id", "caption"])            # pyarrow.Table of every row (or ds.batches() to stream)
vectors = ds.embeddings()                      # (N, D) float32
q = ds.embed_queries(texts=["a red car"])      # (1, D), with the model and settings of the manifest
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layout import shard_path, skipped_path
from .manifest import DatasetError, Manifest, Settings, read_manifest
from .shards import pyarrow


class EmbeddingDataset:
    """A dataset written by ``embed_dataset`` / ``pe embed --out DIR``: its manifest and its complete shards."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest: Manifest = read_manifest(self.root)
        self._model: Any = None

    def __repr__(self) -> str:
        state = "complete" if self.manifest.complete else "partial"
        return f"EmbeddingDataset({str(self.root)!r}, rows={len(self)}, dim={self.dim}, {state})"

    def __len__(self) -> int:
        return self.manifest.rows

    @property
    def settings(self) -> Settings:
        return self.manifest.settings

    @property
    def dim(self) -> int:
        return self.settings.dim

    def shard_files(self) -> list[Path]:
        """The rows files of the shards written, in input order."""
        return [shard_path(self.root, s.index) for s in sorted(self.manifest.shards, key=lambda s: s.index)]

    def batches(self, columns: Sequence[str] | None = None, batch_size: int = 65536) -> Iterator[Any]:
        """Stream the rows as ``pyarrow.RecordBatch``es, shard by shard, in input order."""
        _, pq = pyarrow()
        for path in self.shard_files():
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)

    def table(self, columns: Sequence[str] | None = None) -> Any:
        """Every row as one ``pyarrow.Table`` (``columns``: a subset, e.g. ``["id", "embedding"]``)."""
        pa, pq = pyarrow()
        tables = [pq.read_table(p, columns=columns) for p in self.shard_files()]
        if not tables:
            from .shards import row_schema

            schema = row_schema(self.dim, self.settings.storage, [])
            return schema.empty_table() if columns is None else schema.empty_table().select(list(columns))
        return pa.concat_tables(tables, promote_options="default")

    def embeddings(self) -> np.ndarray:
        """Every embedding as a float32 array ``(N, D)``, in input order."""
        out = np.empty((len(self), self.dim), np.float32)
        n = 0
        for batch in self.batches(["embedding"]):
            values = batch.column(0).values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            out[n : n + len(values)] = values
            n += len(values)
        return out[:n]

    def ids(self) -> list[str]:
        return [i for batch in self.batches(["id"]) for i in batch.column(0).to_pylist()]

    def skipped(self) -> Any:
        """The inputs that could not be used, as a ``pyarrow.Table`` (position, id, source, reason)."""
        pa, pq = pyarrow()
        from .shards import skipped_schema

        paths = [skipped_path(self.root, s.index) for s in self.manifest.shards if s.skipped]
        tables = [pq.read_table(p) for p in paths if p.is_file()]
        return pa.concat_tables(tables) if tables else skipped_schema().empty_table()

    # --- queries -------------------------------------------------------------------------------------

    def check_weights(self, name: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> None:
        """``DatasetError`` unless the weights ``pe.load(name, checkpoint=checkpoint)`` reads hash to the
        manifest's SHA-256 (queries from other weights cannot be compared with the rows)."""
        from ..factory import checkpoint_sha256

        s = self.settings
        sha = checkpoint_sha256(name, checkpoint)
        if sha != s.checkpoint_sha256:
            given = str(name) if checkpoint is None else f"{name} ({checkpoint})"
            raise DatasetError(
                f"{self.root}: the weights of {given!r} hash to {sha[:12]}..., the dataset was made with "
                f"{s.model!r} whose weights hashed to {s.checkpoint_sha256[:12]}...; its rows cannot be "
                "compared with queries from this model"
            )

    def load_model(self, device: str | None = None) -> Any:
        """The model the manifest names, loaded once (its checkpoint must still hash to the manifest's)."""
        if self._model is None:
            from ..factory import load

            s = self.settings
            name, checkpoint = s.weights()
            self.check_weights(name, checkpoint)
            self._model = load(name, checkpoint=checkpoint, device=device, dtype=s.dtype)
        return self._model

    @property
    def features(self) -> Any:
        """The ``embedding.FeatureSpec`` the rows were computed with (the pooled embedding, or block
        features)."""
        from ..embedding import FeatureSpec

        s = self.settings
        return FeatureSpec(pool=s.pool, layer=-1 if s.layer is None else s.layer)

    def image_transform(self) -> Any:
        """The preprocessing of the rows' images (``transforms.ImageTransform``: a path or encoded bytes ->
        ``(3, H, W)``), at the dataset's input size and high-bit-depth rule."""
        from ..transforms import image_transform

        s = self.settings
        return image_transform(tuple(s.image_size), high_bit_depth=s.high_bit_depth)

    def embed_queries(
        self, texts: Sequence[str] = (), images: Sequence[str | os.PathLike] = (), *, model: Any = None
    ) -> torch.Tensor:
        """Query vectors ``(len(texts) + len(images), D)`` in the dataset's space: images through the same
        pipeline and settings as the rows; texts through the text tower (only for datasets of a CLIP
        model's pooled embeddings). Normalised as the rows are.

        ``model``: a model already loaded with the manifest's weights (a server checks them once with
        ``check_weights``); by default the manifest's model is loaded (``load_model``)."""
        from ..embedding import embed_paths, embed_texts, require_clip

        s = self.settings
        model = self.load_model() if model is None else model
        out = []
        if texts:
            require_clip(model, "a text query")
            if s.pool != "pooled":
                raise DatasetError(
                    f"{self.root} holds {s.pool} features of block {s.layer}: text queries live in the pooled "
                    "space only; query with an image"
                )
            out.append(embed_texts(model, list(texts), normalize=s.normalize))
        if images:
            result = embed_paths(
                model,
                list(images),
                features=self.features,
                num_frames=s.frames,
                normalize=s.normalize,
                image_size=tuple(s.image_size),
                high_bit_depth=s.high_bit_depth,
            )
            if result.skipped:
                raise DatasetError(f"query {result.skipped[0].path}: {result.skipped[0].reason}")
            out.append(result.embeddings)
        if not out:
            raise ValueError("give at least one text or image query")
        return torch.cat(out).float()


def open_dataset(root: str | os.PathLike) -> EmbeddingDataset:
    """The embedding dataset at ``root`` (``DatasetError`` when it is not one)."""
    return EmbeddingDataset(root)
