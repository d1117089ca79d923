"""Search over an indexed dataset (``pe serve --index DATASET``): queries embedded as the dataset's rows
were, by the server's own model, and answered by the dataset's index (``index.open_index``).

The server's model must be the one the manifest names: its weights must hash to the manifest's SHA-256
(``EmbeddingDataset.check_weights``), checked when the server starts. Text queries go through
``EmbeddingDataset.embed_queries`` (the text tower; pooled datasets only); image queries through the
dataset's preprocessing (``image_transform()``: its input size and high-bit-depth rule) and features
(``features``: pooled, or block features), normalised as its rows are. Scores are cosine similarities.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import torch

from ..datasets import open_dataset
from ..embedding import as_encoder
from ..embedding.pipeline import media_encoder
from ..index import open_index
from ..index.backend import ROW
from .errors import APIError
from .thumbnails import Thumbnails

#: Rows whose id and source are remembered from search answers (for their thumbnails), at most.
ROW_CACHE = 4096


class SearchIndex:
    """An indexed dataset and the server's model (``torch``; checked against the manifest by the caller
    through ``EmbeddingDataset.check_weights``)."""

    def __init__(
        self, root: str | os.PathLike, model: torch.nn.Module, *, max_pixels: int, thumbnail_size: int
    ) -> None:
        self.dataset = open_dataset(root)
        self.index = open_index(self.dataset)  # no index, or a stale one: said at start-up
        self.model = model
        s = self.dataset.settings
        self.transform = self.dataset.image_transform()
        self._images = media_encoder(as_encoder(model).features(self.dataset.features), normalize=s.normalize)
        self.thumbnails = Thumbnails(s.inputs, size=thumbnail_size, max_pixels=max_pixels)
        self._rows: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self._rows_lock = threading.Lock()  # searches and thumbnails run in several threads

    @property
    def accepts_text(self) -> bool:
        """Text queries need a CLIP model and a dataset of its pooled embeddings."""
        return hasattr(self.model, "encode_text") and self.dataset.settings.pool == "pooled"

    def describe(self) -> dict[str, Any]:
        s = self.dataset.settings
        return {
            "dataset": str(self.dataset.root),
            "rows": self.index.info.rows,
            "dim": s.dim,
            "model": s.model,
            "features": self.dataset.features.describe(),
            "text_queries": self.accepts_text,
            "ann": self.index.has_ann,
            "columns": list(self.index.info.metadata_columns),
        }

    # --- on the model thread ----------------------------------------------------------------------------

    def embed(self, queries: list[tuple[str, Any]]) -> torch.Tensor:
        """``("text", str)`` and ``("image", (3, H, W) pixels)`` queries -> ``(len(queries), D)``, in order."""
        out: list[torch.Tensor | None] = [None] * len(queries)
        texts = [i for i, (kind, _) in enumerate(queries) if kind == "text"]
        images = [i for i, (kind, _) in enumerate(queries) if kind == "image"]
        if texts:
            vectors = self.dataset.embed_queries(texts=[queries[i][1] for i in texts], model=self.model)
            for i, v in zip(texts, vectors, strict=True):
                out[i] = v
        if images:
            with torch.inference_mode():
                vectors = self._images([queries[i][1] for i in images])
            for i, v in zip(images, vectors, strict=True):
                out[i] = v
        return torch.stack(out).float()  # type: ignore[arg-type]

    # --- in a worker thread -------------------------------------------------------------------------------

    def search(self, vector: torch.Tensor, k: int, where: str | None) -> list[dict[str, Any]]:
        """The ``k`` rows nearest to ``vector`` ``(D,)``: ``rank``, ``score``, ``row``, ``id``, ``source``,
        ``metadata`` and ``thumbnail`` (its URL, or ``None`` for rows that are not files)."""
        (hits,) = self.index.search(vector[None], k=k, where=where)
        records = hits.records()
        for r in records:
            self._remember(r["row"], r["id"], r["source"])
            r["thumbnail"] = f"/v1/thumbnails/{r['row']}" if Thumbnails.has_file(r["source"]) else None
        return records

    def thumbnail(self, row: int) -> bytes:
        """A JPEG of row ``row``'s image (404 when it has none)."""
        id, source = self._row(row)
        return self.thumbnails.render(self.thumbnails.locate(row, id, source), row)

    def _remember(self, row: int, id: str, source: str) -> None:
        with self._rows_lock:
            self._rows[row] = (id, source)
            self._rows.move_to_end(row)
            while len(self._rows) > ROW_CACHE:
                self._rows.popitem(last=False)

    def _row(self, row: int) -> tuple[str, str]:
        if not 0 <= row < self.index.info.rows:
            raise APIError(
                404, f"row {row} does not exist (the dataset has {self.index.info.rows} rows)", code="no_row"
            )
        with self._rows_lock:
            cached = self._rows.get(row)
        if cached is not None:
            return cached
        found = (
            self.index.table.search()
            .where(f"{ROW} = {int(row)}")
            .select(["id", "source"])
            .limit(1)
            .to_arrow()
        )
        if found.num_rows == 0:
            raise APIError(404, f"row {row} is not in the index", code="no_row")
        id, source = found.column("id")[0].as_py(), found.column("source")[0].as_py()
        self._remember(row, id, source)
        return id, source
