"""The one place that imports LanceDB, and the names of what the index stores.

The index of a dataset ``DIR`` is a LanceDB database in ``DIR/index/`` holding one table, ``rows``: the
dataset's columns (``id``, ``source``, ``embedding`` as float32, the metadata columns) plus ``_row``, the
row's position in the dataset (its row in ``ds.embeddings()``), and ``index.json`` (``info.IndexInfo``).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import VectorIndexError

TABLE = "rows"
VECTOR = "embedding"
#: The row's position in the dataset; a dataset may not have a metadata column of this name.
ROW = "_row"
#: LanceDB's distance column in search results (cosine distance = 1 - cosine similarity).
DISTANCE = "_distance"
METRIC = "cosine"


def lancedb() -> Any:
    """The ``lancedb`` module, or an ``ImportError`` saying how to install it."""
    try:
        import lancedb as module
    except ImportError as exc:
        raise ImportError(
            'pe index / search / dedup need LanceDB: pip install -e ".[index]" (or pip install lancedb)'
        ) from exc
    return module


def open_table(folder: str | os.PathLike) -> Any:
    """The ``rows`` table of the index database in ``folder``."""
    try:
        return lancedb().connect(str(folder)).open_table(TABLE)
    except (ValueError, OSError, RuntimeError) as exc:  # how LanceDB reports a missing or broken table
        raise VectorIndexError(
            f"cannot open the index in {folder}: {one_line(exc)}; rerun `pe index`"
        ) from exc


def one_line(exc: BaseException) -> str:
    """An error message of LanceDB's on one line, without its ``Invalid input, `` prefix."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text.removeprefix("Invalid input, ")
