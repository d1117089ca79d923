"""Vector search and near-duplicates over an embedding dataset (``pe index``, ``pe search``, ``pe dedup``),
with LanceDB (``pip install -e ".[index]"``), imported only inside this package.

    from perception_encoder.datasets import open_dataset
    from perception_encoder.index import build_index, dedup, search

    ds = open_dataset("emb/")
    build_index(ds)                                        # DIR/index/: exact; ANN from 100k rows
    hits = search(ds, ds.embed_queries(texts=["a red car"]), k=10, where="width >= 512")
    hits[0].ids, hits[0].scores                            # best first; cosine similarity
    groups = dedup(ds, 0.95)                               # [["a.jpg", "a_copy.jpg"], ...]

- ``build``: ``build_index`` (the rows streamed into LanceDB, the ANN settings measured);
- ``query``: ``open_index`` (checked fresh against the manifest) and ``search`` -> ``SearchHits``;
- ``duplicates``: ``dedup`` / ``duplicate_rows``, exact (blocked products) or through the index, joined by
  ``unionfind``;
- ``info``: ``index.json`` and staleness; ``backend``: the LanceDB import; ``errors``.
"""

from .build import ANN_MIN_ROWS, build_index
from .duplicates import dedup, duplicate_rows
from .errors import StaleIndexError, VectorIndexError
from .info import IndexInfo
from .query import SearchHits, VectorIndex, open_index, search

__all__ = [
    "ANN_MIN_ROWS",
    "IndexInfo",
    "SearchHits",
    "StaleIndexError",
    "VectorIndex",
    "VectorIndexError",
    "build_index",
    "dedup",
    "duplicate_rows",
    "open_index",
    "search",
]
