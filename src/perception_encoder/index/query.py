"""Opening a dataset's index and searching it: ``open_index(ds).search(queries, k=10, where=...)``.

Scores are cosine similarities (``1 -`` LanceDB's cosine distance). Exact search scans every row (LanceDB's
flat search); with an ANN index, search probes it with the settings ``build_index`` measured
(``IndexInfo.search_params``), and ``exact=True`` bypasses it. ``where`` is an SQL filter on the row's columns
(``caption LIKE '%car%' AND width >= 512``), applied before the nearest rows are chosen, so a filtered
search still returns ``k`` rows when ``k`` rows match.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..datasets import EmbeddingDataset, open_dataset
from ..datasets.layout import INDEX
from ..datasets.manifest import read_manifest
from .backend import DISTANCE, METRIC, ROW, VECTOR, one_line, open_table
from .errors import StaleIndexError, VectorIndexError
from .info import INFO_FILE, IndexInfo, read_info, staleness

#: Query vectors sent to LanceDB per call (one multi-vector query: fewer round trips than one per vector).
QUERY_CHUNK = 256

Dataset = EmbeddingDataset | str | os.PathLike


def as_dataset(dataset: Dataset) -> EmbeddingDataset:
    return dataset if isinstance(dataset, EmbeddingDataset) else open_dataset(dataset)


@dataclass
class SearchHits:
    """The nearest rows of one query, best first (at most ``k``; fewer when fewer rows match).

    ``scores``: ``(n,)`` float32 cosine similarities; ``rows``: ``(n,)`` int64 positions of the rows in the
    dataset (their rows in ``ds.embeddings()``); ``table``: a ``pyarrow.Table`` of the ``n`` rows' ``id``,
    ``source`` and metadata columns."""

    scores: np.ndarray
    rows: np.ndarray
    table: Any

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: ``rank`` (from 1), ``score``, ``row``, ``id``, ``source``, ``metadata``."""
        out = []
        for i, values in enumerate(self.table.to_pylist()):
            out.append(
                {
                    "rank": i + 1,
                    "score": float(self.scores[i]),
                    "row": int(self.rows[i]),
                    "id": values.pop("id"),
                    "source": values.pop("source"),
                    "metadata": values,
                }
            )
        return out


class VectorIndex:
    """The index of a dataset, checked fresh when opened (``open_index``)."""

    def __init__(self, dataset: EmbeddingDataset, info: IndexInfo, table: Any) -> None:
        self.dataset = dataset
        self.info = info
        self.table = table

    def __repr__(self) -> str:
        kind = self.info.ann["type"] if self.info.ann else "exact"
        return f"VectorIndex({str(self.dataset.root)!r}, rows={self.info.rows}, {kind})"

    @property
    def has_ann(self) -> bool:
        return self.info.ann is not None

    def check_filter(self, where: str | None) -> None:
        """A ``VectorIndexError`` naming ``where`` when it is not a valid filter on the rows' columns
        (unknown column, wrong type, not SQL, not a condition). Cheap: the query is planned, not run."""
        if where is None:
            return
        columns = ", ".join(c for c in self.info.columns if c != VECTOR)
        if not where.strip() or _outside_quotes(where, ";"):
            raise VectorIndexError(f"filter {where!r} is not one SQL condition; filter on: {columns}")
        try:
            self.table.search().where(where).select([ROW]).limit(1).explain_plan()
        except (ValueError, RuntimeError) as exc:
            reason = re.sub(r",? /\S+\.rs:\d+:\d+", "", one_line(exc))  # where in LanceDB's Rust code
            reason = re.sub(r"\s*Valid fields are [^;]*", "", reason).rstrip(".")  # ours are listed below
            raise VectorIndexError(f"filter {where!r} is not valid: {reason}; filter on: {columns}") from None

    def query(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        where: str | None = None,
        exact: bool = False,
        columns: Sequence[str] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """For each of ``vectors`` ``(Q, D)`` float32: ``(rows, distances, table)`` of its ``k`` nearest
        rows, nearest first; ``table`` holds their ``columns`` (default: ``id``, ``source`` and the metadata
        columns)."""
        if columns is None:
            columns = [c for c in self.info.columns if c != VECTOR]
        wanted = [ROW, *columns, DISTANCE]
        out: list[tuple[np.ndarray, np.ndarray, Any]] = []
        for start in range(0, len(vectors), QUERY_CHUNK):
            chunk = vectors[start : start + QUERY_CHUNK]
            sent = chunk[0] if len(chunk) == 1 else list(chunk)  # one vector alone: a plain query, faster
            builder = self.table.search(sent, vector_column_name=VECTOR).distance_type(METRIC)
            if where is not None:
                builder = builder.where(where, prefilter=True)
            if exact and self.has_ann:
                builder = builder.bypass_vector_index()
            elif self.has_ann:
                builder = _tune(builder, self.info.search_params, k, filtered=where is not None)
            result = builder.select(wanted).limit(k).to_arrow()
            out.extend(_split(result, len(chunk)))
        return out

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        *,
        k: int = 10,
        where: str | None = None,
        exact: bool = False,
    ) -> list[SearchHits]:
        """The ``k`` rows nearest to each query of ``queries`` ``(Q, D)`` (or one ``(D,)``), by cosine
        similarity; ``where``: an SQL filter on the rows' columns; ``exact``: scan every row even when an
        ANN index exists. Returns ``Q`` ``SearchHits``, in the order of the queries."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        vectors = _check_queries(queries, self.info.dim)
        self.check_filter(where)
        if self.info.rows == 0 or len(vectors) == 0:
            empty = self.table.schema.empty_table().drop_columns([ROW, VECTOR])
            return [SearchHits(np.empty(0, np.float32), np.empty(0, np.int64), empty) for _ in vectors]
        hits = []
        for rows, distances, table in self.query(vectors, k, where=where, exact=exact):
            hits.append(SearchHits((1.0 - distances).astype(np.float32), rows, table))
        return hits


def open_index(dataset: Dataset) -> VectorIndex:
    """The index of ``dataset`` (an ``EmbeddingDataset`` or its folder). ``VectorIndexError`` when it has
    none, ``StaleIndexError`` when the dataset changed since it was built (both say to run ``pe index``)."""
    ds = as_dataset(dataset)
    folder = ds.root / INDEX
    if not (folder / INFO_FILE).is_file():
        raise VectorIndexError(f"{ds.root} has no index: run `pe index {ds.root}` first")
    info = read_info(folder)
    reason = staleness(info, read_manifest(ds.root))  # the dataset on disk now, not as `ds` first read it
    if reason is not None:
        raise StaleIndexError(f"the index of {ds.root} is stale: {reason}; rerun `pe index {ds.root}`")
    return VectorIndex(ds, info, open_table(folder))


def search(
    dataset: Dataset,
    queries: torch.Tensor | np.ndarray,
    *,
    k: int = 10,
    where: str | None = None,
    exact: bool = False,
) -> list[SearchHits]:
    """``open_index(dataset).search(queries, k=k, where=where, exact=exact)``: one ``SearchHits`` per query
    row of ``queries`` ``(Q, D)``, e.g. ``ds.embed_queries(texts=["a red car"])``."""
    return open_index(dataset).search(queries, k=k, where=where, exact=exact)


# --- helpers ----------------------------------------------------------------------------------------------


def _check_queries(queries: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """``queries`` as a C-contiguous float32 ``(Q, dim)`` array of finite, non-zero vectors."""
    if isinstance(queries, torch.Tensor):
        queries = queries.detach().float().cpu().numpy()
    vectors = np.asarray(queries, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(
            f"queries must be (Q, {dim}) vectors in the dataset's space, got {tuple(vectors.shape)}"
        )
    if not np.isfinite(vectors).all():
        raise ValueError("queries hold NaN or infinite values")
    zero = np.flatnonzero(~vectors.any(axis=1))
    if len(zero):
        raise ValueError(f"query {int(zero[0])} is a zero vector: it has no cosine similarity to anything")
    return np.ascontiguousarray(vectors)


def _tune(builder: Any, params: dict[str, int], k: int, *, filtered: bool) -> Any:
    """Apply the ANN search settings ``build_index`` chose. The graph search keeps at least as many
    candidates as are re-ranked. A filtered query may probe every partition when the ones chosen first hold
    fewer than ``k`` matching rows (``maximum_nprobes(0)``)."""
    refine = params.get("refine_factor", 0)
    if "nprobes" in params:
        builder = builder.minimum_nprobes(params["nprobes"])
        builder = builder.maximum_nprobes(0 if filtered else params["nprobes"])
    if "ef" in params:
        builder = builder.ef(max(params["ef"], k * max(1, refine)))
    if refine:
        builder = builder.refine_factor(refine)
    return builder


def _split(result: Any, queries: int) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """LanceDB's answer to a multi-vector query (a ``query_index`` column when several were sent) -> the
    rows, distances and other columns of each query, nearest first (ties: lower row first)."""
    pa = _pyarrow()
    if "query_index" in result.column_names:
        which = result.column("query_index").to_numpy()
        result = result.drop_columns(["query_index"])
    else:
        which = np.zeros(result.num_rows, np.int64)
    rows = result.column(ROW).to_numpy()
    distances = result.column(DISTANCE).to_numpy().astype(np.float64)
    rest = result.drop_columns([ROW, DISTANCE])
    out = []
    for q in range(queries):
        mine = np.flatnonzero(which == q)
        mine = mine[np.lexsort((rows[mine], distances[mine]))]
        out.append((rows[mine].astype(np.int64), distances[mine], rest.take(pa.array(mine))))
    return out


def _outside_quotes(text: str, char: str) -> bool:
    """Whether ``char`` occurs in ``text`` outside single-quoted SQL strings."""
    return char in re.sub(r"'(?:[^']|'')*'", "", text)


def _pyarrow() -> Any:
    import pyarrow

    return pyarrow
