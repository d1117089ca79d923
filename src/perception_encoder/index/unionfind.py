"""Union-find over ``n`` items, vectorised with NumPy: pairs are joined a batch at a time, so millions of
near-duplicate pairs cost array operations, not Python loops."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets of the items ``0 .. n - 1``. Every root is the smallest item of its set, and a parent
    is never larger than its child (so the forest has no cycles and joins always terminate)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, items: np.ndarray) -> np.ndarray:
        """The roots of ``items`` (int64 array); the paths followed are compressed."""
        items = np.asarray(items, dtype=np.int64)
        roots = self.parent[items]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[items] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the set of ``a[i]`` with the set of ``b[i]`` for every ``i``."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while a.size:
            ra, rb = self.find(a), self.find(b)
            apart = ra != rb
            lo, hi = np.minimum(ra[apart], rb[apart]), np.maximum(ra[apart], rb[apart])
            # each root `hi` hangs under the smallest `lo` it is paired with; its other pairs are joined
            # on the next pass, through the roots they now have
            np.minimum.at(self.parent, hi, lo)
            a, b = lo, hi

    def groups(self, min_size: int = 2) -> list[np.ndarray]:
        """The sets of at least ``min_size`` items, each sorted, ordered by their smallest item."""
        roots = self.find(np.arange(len(self.parent)))
        order = np.argsort(roots, kind="stable")
        sorted_roots = roots[order]
        starts = np.flatnonzero(np.r_[True, sorted_roots[1:] != sorted_roots[:-1]])
        ends = np.r_[starts[1:], len(order)]
        return [order[s:e] for s, e in zip(starts, ends, strict=True) if e - s >= min_size]
