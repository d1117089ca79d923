"""Writing and finding the shard files of an embedding dataset (layout in ``datasets.layout``).

``write_shard`` writes a shard's skipped file, then its rows file, each through a temporary name: a rows
file under its final name is complete, so its presence marks the shard done. The rows file's Parquet
metadata repeats the shard's record (``pe_shard``), so a job killed after writing it but before updating
the manifest still knows what it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .items import InputItem
from .layout import SHARDS, SKIPPED, shard_index, shard_path, skipped_path
from .manifest import DatasetError, ShardRecord

SHARD_METADATA_KEY = b"pe_shard"


def pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "embedding datasets need pyarrow: pip install 'perception-encoder[parquet]'"
        ) from exc
    return pa, pq


def fingerprint_line(item: InputItem) -> bytes:
    """What identifies an input in its shard's fingerprint: its position, source and id."""
    return f"{item.position}\t{item.source}\t{item.id}\n".encode("utf-8", "surrogateescape")


def ids_fingerprint(items: Iterable[InputItem]) -> str:
    """SHA-256 of the shard's inputs in order: equal inputs give an equal print."""
    h = hashlib.sha256()
    for item in items:
        h.update(fingerprint_line(item))
    return h.hexdigest()


def row_schema(dim: int, storage: str, metadata: Any):
    """The Arrow schema of a dataset's rows: id, source, embedding, then the metadata columns."""
    pa, _ = pyarrow()
    value = pa.float16() if storage == "float16" else pa.float32()
    fields = [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("embedding", pa.list_(value, dim)),
    ]
    return pa.schema(fields + list(metadata))


def skipped_schema():
    pa, _ = pyarrow()
    return pa.schema(
        [
            pa.field("position", pa.int64()),
            pa.field("id", pa.string()),
            pa.field("source", pa.string()),
            pa.field("reason", pa.string()),
        ]
    )


def _name(value: str) -> str:
    """An id or source as one valid UTF-8 line: ``embedding.escape_name``, the rule of ``.paths.txt``."""
    from ..embedding.output import escape_name

    return escape_name(value)


def _reason(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def write_shard(
    root: str | os.PathLike,
    record: ShardRecord,
    rows: Sequence[InputItem],
    embeddings: np.ndarray,
    skipped: Sequence[tuple[InputItem, str]],
    schema: Any,
) -> Path:
    """Write shard ``record.index``: ``rows`` with their ``embeddings`` ``(len(rows), dim)`` and the
    ``skipped`` inputs with their reasons. Returns the rows file."""
    pa, pq = pyarrow()
    root = Path(root)
    meta = {SHARD_METADATA_KEY: json.dumps(record.__dict__).encode()}
    if skipped:
        table = pa.table(
            {
                "position": pa.array([item.position for item, _ in skipped], pa.int64()),
                "id": [_name(item.id) for item, _ in skipped],
                "source": [_name(item.source) for item, _ in skipped],
                "reason": [_reason(reason) for _, reason in skipped],
            },
            schema=skipped_schema(),
        )
        path = skipped_path(root, record.index)
        atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp))
    else:
        skipped_path(root, record.index).unlink(missing_ok=True)  # from an earlier, interrupted attempt
    emb_field = schema.field("embedding")
    dim = emb_field.type.list_size
    values = np.ascontiguousarray(
        embeddings, dtype=np.float16 if emb_field.type.value_type == pa.float16() else np.float32
    )
    if values.shape != (len(rows), dim):
        raise ValueError(f"shard {record.index}: {values.shape} embeddings for {len(rows)} rows of dim {dim}")
    columns: dict[str, Any] = {
        "id": pa.array([_name(item.id) for item in rows], pa.string()),
        "source": pa.array([_name(item.source) for item in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1), emb_field.type.value_type), dim
        ),
    }
    for f in schema:
        if f.name not in columns:
            columns[f.name] = pa.array([dict(item.metadata).get(f.name) for item in rows], f.type)
    table = pa.table(columns, schema=schema).replace_schema_metadata(meta)
    path = shard_path(root, record.index)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def written_shards(root: str | os.PathLike) -> dict[int, ShardRecord]:
    """The shards on disk under their final names, with the records their files carry."""
    _, pq = pyarrow()
    found: dict[int, ShardRecord] = {}
    folder = Path(root) / SHARDS
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        k = shard_index(path)
        if k is None:
            continue
        try:
            meta = pq.read_schema(path).metadata or {}
            found[k] = ShardRecord(**json.loads(meta[SHARD_METADATA_KEY]))
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise DatasetError(
                f"{path} is not a shard of this library ({e}); remove it or use --overwrite"
            ) from e
    return found


def remove_dataset_files(root: str | os.PathLike) -> None:
    """Remove what a dataset job writes (manifest, shards, skipped files, index, temporaries), nothing else."""
    import shutil

    from .layout import INDEX, MANIFEST

    root = Path(root)
    for name in (SHARDS, SKIPPED, INDEX):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    (root / MANIFEST).unlink(missing_ok=True)
