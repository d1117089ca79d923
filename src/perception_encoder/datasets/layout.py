"""The on-disk layout of an embedding dataset (``pe embed INPUTS --out DIR``), in one place.

::

    DIR/
      manifest.json                what makes rows comparable, and the shards written so far
      shards/part-00000.parquet    rows of inputs 0 .. S-1 (S = shard_size inputs), in input order
      shards/part-00001.parquet    rows of inputs S .. 2S-1, ...
      skipped/part-00000.parquet   the inputs of shard 0 that could not be used, with their reasons
      index/                       the vector index (``pe index``), when built

A shard covers a fixed range of input positions: shard ``k`` holds the rows of inputs ``k*S`` to
``(k+1)*S - 1`` that could be used, and its skipped file those that could not, so every input appears
exactly once, in a row or among the skipped. A shard is written to a temporary name and renamed, after its
skipped file: a shard file under its final name is complete, and it is never rewritten.

Row columns: ``id`` (string: the path relative to its input folder, the tar member key, the table's id
column or row number, or the file name given), ``source`` (string: the input that holds it, as given; ids
and sources are written as ``embedding.escape_name`` writes names, so a newline or bytes that are not UTF-8
survive),
``embedding`` (fixed-size list of float32, or float16 with ``--half``), then the input's own metadata
columns (a table's other columns, a tar sample's text members), the same in every shard (null where an
input has none). Skipped columns: ``position`` (int64), ``id``, ``source``, ``reason``.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
SHARDS = "shards"
SKIPPED = "skipped"
INDEX = "index"
FORMAT = "perception_encoder.embedding_dataset"
VERSION = 1

#: Columns every row has, before the metadata columns.
ROW_COLUMNS = ("id", "source", "embedding")
SKIPPED_COLUMNS = ("position", "id", "source", "reason")
#: Target size of a shard file; the default shard size (in inputs) is this over the bytes of a row.
SHARD_BYTES = 256 << 20


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def shard_path(root: str | Path, k: int) -> Path:
    return Path(root) / SHARDS / shard_name(k)


def skipped_path(root: str | Path, k: int) -> Path:
    return Path(root) / SKIPPED / shard_name(k)


def shard_index(path: str | Path) -> int | None:
    """``part-00012.parquet`` -> 12; ``None`` for any other name."""
    name = Path(path).name
    if name.startswith("part-") and name.endswith(".parquet") and name[5:-8].isdigit():
        return int(name[5:-8])
    return None


def default_shard_size(dim: int, bytes_per_value: int) -> int:
    """Inputs per shard for files of about ``SHARD_BYTES`` (the embedding column dominates a row)."""
    return max(1, SHARD_BYTES // max(1, dim * bytes_per_value))
