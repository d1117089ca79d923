"""Near-duplicate groups of a dataset: rows whose cosine similarity reaches a threshold, joined
transitively (``a ~ b`` and ``b ~ c`` put ``a``, ``b`` and ``c`` in one group).

Two ways to find the similar pairs:

- ``exact``: every pair, by blocked matrix products in torch (the ``(N, D)`` float32 vectors in memory, plus
  one ``block x block`` tile of similarities at a time);
- ``index``: each row's ``neighbours`` nearest rows from the dataset's index (``pe index``): about
  ``N log N`` work instead of ``N^2``, approximate with an ANN index (a pair it misses is usually still
  joined through the rest of its group), and a row with more than ``neighbours`` near-duplicates keeps only
  its nearest as direct links.

``method="auto"`` is exact while rows x dimension <= ``EXACT_MAX_VALUES``, the index above.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from ..datasets import EmbeddingDataset
from .query import Dataset, as_dataset, open_index
from .unionfind import UnionFind

#: ``method="auto"`` compares every pair while rows x dimension stays under this (390k rows of 512-d, 156k of
#: 1280-d: 0.8 GB of vectors). Measured at 100k rows of 512 on 2 cores (RESULTS.md): exact 34 s (~3.4e-9 *
#: N^2 s, so ~8.6 min at 390k), through the ANN index 157 s (~1.6 ms per row, ~10 min at 390k).
EXACT_MAX_VALUES = 200_000_000
#: Similarities within this of the threshold count as reaching it (float32 rounding: an exact copy may
#: score 0.99999994 against itself).
TOLERANCE = 1e-6
#: Pairs gathered before they are joined (bounds the memory of a low threshold's many pairs).
PAIR_BUFFER = 1 << 22

Method = Literal["auto", "exact", "index"]


def dedup(
    dataset: Dataset,
    threshold: float,
    *,
    method: Method = "auto",
    block_size: int = 4096,
    neighbours: int = 16,
) -> list[list[str]]:
    """Groups of near-duplicate rows of ``dataset``: the ids of each group (two or more rows whose
    similarities of at least ``threshold`` connect them), in dataset order, groups ordered by their first
    row. Rows without a near-duplicate are in no group. See ``duplicate_rows`` for the arguments."""
    ds = as_dataset(dataset)
    groups = duplicate_rows(ds, threshold, method=method, block_size=block_size, neighbours=neighbours)
    if not groups:
        return []
    ids = ds.ids()
    return [[ids[i] for i in group] for group in groups]


def duplicate_rows(
    dataset: Dataset,
    threshold: float,
    *,
    method: Method = "auto",
    block_size: int = 4096,
    neighbours: int = 16,
) -> list[np.ndarray]:
    """The groups of ``dedup`` as sorted int64 arrays of row positions (rows of ``ds.embeddings()``).

    ``threshold``: the cosine similarity in ``(0, 1]`` from which two rows are near-duplicates.
    ``method``: ``"exact"`` (every pair; ``block_size`` rows per side of a tile of similarities),
    ``"index"`` (the ``neighbours`` nearest rows of each row, through the dataset's index, which must be
    built and fresh), ``"auto"`` (exact while rows x dimension <= ``EXACT_MAX_VALUES``)."""
    ds = as_dataset(dataset)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    if method not in ("auto", "exact", "index"):
        raise ValueError(f"method must be auto, exact or index, got {method!r}")
    if block_size < 1 or neighbours < 1:
        raise ValueError(f"block_size and neighbours must be positive, got {block_size} and {neighbours}")
    if method == "auto":
        method = "exact" if len(ds) * ds.dim <= EXACT_MAX_VALUES else "index"
    uf = UnionFind(len(ds))
    if method == "exact":
        pairs = _exact_pairs(ds.embeddings(), threshold, block_size)
    else:
        pairs = _index_pairs(ds, threshold, neighbours)
    buffer: list[tuple[np.ndarray, np.ndarray]] = []
    held = 0
    for a, b in pairs:
        buffer.append((a, b))
        held += len(a)
        if held >= PAIR_BUFFER:
            uf.union(np.concatenate([p[0] for p in buffer]), np.concatenate([p[1] for p in buffer]))
            buffer, held = [], 0
    if buffer:
        uf.union(np.concatenate([p[0] for p in buffer]), np.concatenate([p[1] for p in buffer]))
    return uf.groups()


def _exact_pairs(
    vectors: np.ndarray, threshold: float, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair ``i < j`` of rows of ``vectors`` ``(N, D)`` with cosine similarity >= ``threshold``,
    a ``block x block`` tile of similarities at a time (the upper triangle only)."""
    x = torch.from_numpy(vectors)
    x /= x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # in place: ``vectors`` is ours (ds.embeddings())
    n = len(x)
    for i in range(0, n, block):
        a = x[i : i + block]
        for j in range(i, n, block):
            close = a @ x[j : j + block].T >= threshold - TOLERANCE
            if j == i:  # the diagonal tile: each pair once, no row with itself
                close = close.triu(1)
            ii, jj = torch.nonzero(close, as_tuple=True)
            if len(ii):
                yield (ii + i).numpy(), (jj + j).numpy()


def _index_pairs(
    ds: EmbeddingDataset, threshold: float, neighbours: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each row paired with those of its ``neighbours`` nearest rows (by the index) that reach
    ``threshold``; the rows are read shard by shard."""
    index = open_index(ds)
    start = 0
    for batch in ds.batches(["embedding"], batch_size=4096):
        vectors = batch.column(0).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = vectors.reshape(-1, ds.dim)
        rows = np.arange(start, start + len(vectors))
        start += len(vectors)
        live = vectors.any(axis=1)  # a zero vector has no cosine similarity: no duplicates
        found = index.query(vectors[live], neighbours + 1, columns=[])
        for row, (near, distances, _) in zip(rows[live], found, strict=True):
            keep = (1.0 - distances >= threshold - TOLERANCE) & (near != row)
            if keep.any():
                yield np.full(int(keep.sum()), row), near[keep]
