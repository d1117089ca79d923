"""Building a dataset's index: ``build_index(ds)`` -> ``DIR/index/``, replacing any earlier one.

The rows are streamed shard by shard into a LanceDB table (record batches: the dataset is never whole in
memory), with ``_row`` (the row's position in the dataset) added and float16 embeddings stored as float32.
Small datasets are searched exactly (a flat scan); from ``ANN_MIN_ROWS`` rows an ANN index is trained too.
The choice of index, its settings and the threshold come from ``benchmarks/search_bench.py`` (numbers in
``benchmarks/RESULTS.md``).

Everything is built in a temporary folder inside ``DIR`` (``.index-*.tmp``), its description
(``index.json``) written last, then renamed to ``DIR/index``: a build that fails or is killed leaves the
previous index as it was (a kill leaves the temporary folder, removed by the next build). One build per
dataset at a time.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import EmbeddingDataset
from ..datasets.layout import INDEX
from ..datasets.shards import pyarrow, row_schema
from ..errors import OutputError
from .backend import METRIC, ROW, TABLE, VECTOR, lancedb
from .errors import VectorIndexError
from .info import IndexInfo, dataset_fingerprint, write_info
from .query import Dataset, as_dataset

#: Datasets of at least this many rows get an ANN index when ``ann`` is not given. Measured (RESULTS.md):
#: an exact scan costs ~2 us per row (74 ms at 30k rows, 0.21 s at 100k, 1.9 s at 1M), less than loading
#: the model and embedding the query up to here; training the ANN index costs ~0.26-0.3 ms per row (26 s at
#: 100k, as much as ~120 exact scans) and then answers in 5-10 ms.
ANN_MIN_ROWS = 100_000
#: The fewest rows an ANN index is trained on (LanceDB's quantizers need a sample of this size).
ANN_FEWEST_ROWS = 256
#: The ANN index: IVF partitions, each an HNSW graph over scalar-quantized (int8) vectors. Measured against
#: IVF_PQ at 1M rows of 512 (RESULTS.md): recall@10 1.00 at 10 ms per query here, where IVF_PQ gave
#: 0.92-0.98 at 10-16 ms (it trains 1.5-3.7x faster).
ANN_TYPE = "IVF_HNSW_SQ"
#: Rows per IVF partition. The partitions only bound the memory of training one graph: every partition is
#: searched (clusters straddle partitions, and probing fewer lost up to half the recall at 1M rows).
ROWS_PER_PARTITION = 262_144
HNSW_M = 20
#: Half LanceDB's default (300), for a faster build; recall at 1M rows stayed >= 0.99 (RESULTS.md).
HNSW_EF_CONSTRUCTION = 150
#: Candidates kept while walking a graph (at least ``refine_factor * k``). 40 already gave recall@10 0.99,
#: but ~0.7 % of queries at 100k rows (0.1 % at 1M) then lost their way in the graph and missed even their
#: own row (RESULTS.md); from 128 none of 3,000 did, for +0.2-0.5 ms.
SEARCH_EF = 128
#: The best ``refine_factor * k`` candidates are re-ranked with the float32 vectors, so the scores returned
#: are exact cosine similarities, not the int8 approximations.
SEARCH_REFINE = 2
TEMP_PREFIX = ".index-"
TEMP_SUFFIX = ".tmp"


def build_index(
    dataset: Dataset,
    *,
    ann: bool | None = None,
    ann_min_rows: int = ANN_MIN_ROWS,
    batch_size: int = 65_536,
) -> IndexInfo:
    """Build the index of ``dataset`` (an ``EmbeddingDataset`` or its folder) in ``DIR/index/``, from the
    shards its manifest lists, replacing any earlier index once the new one is complete.

    ``ann``: ``True`` trains an ANN index (needs ``ANN_FEWEST_ROWS`` rows), ``False`` keeps exact search
    only, ``None`` trains one from ``ann_min_rows`` rows. ``batch_size``: rows read per record batch.
    Returns what was written (``IndexInfo``, also in ``DIR/index/index.json``)."""
    ds = as_dataset(dataset)
    rows = len(ds)
    if ann is None:
        ann = rows >= ann_min_rows
    if ann and rows < ANN_FEWEST_ROWS:
        raise VectorIndexError(
            f"{ds.root} has {rows} rows: an ANN index needs at least {ANN_FEWEST_ROWS}; "
            "index it for exact search (pe index --exact-only)"
        )
    lance = lancedb()
    pa, _ = pyarrow()
    _remove_leftovers(ds.root)
    try:
        temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=ds.root))
    except OSError as e:
        raise OutputError(f"cannot write the index of {ds.root}: {e.strerror or e}") from e
    try:
        start = time.perf_counter()
        schema = index_schema(ds)
        reader = pa.RecordBatchReader.from_batches(schema, _index_batches(ds, schema, batch_size))
        table = lance.connect(str(temp)).create_table(TABLE, data=reader)
        ann_info, search_params = None, {}
        if ann:
            ann_info, search_params = _train_ann(table, rows)
        info = IndexInfo(
            rows=rows,
            dim=ds.dim,
            dataset_updated=ds.manifest.updated,
            dataset_fingerprint=dataset_fingerprint(ds.manifest),
            columns=[f.name for f in schema if f.name != ROW],
            ann=ann_info,
            search_params=search_params,
            seconds=round(time.perf_counter() - start, 3),
            built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            library_version=_version(),
        )
        write_info(temp, info)  # last: a folder without it is never read as an index
        _replace(temp, ds.root / INDEX)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return info


def ann_settings(rows: int) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """The LanceDB index config for ``rows`` rows, its description for ``index.json``, and the search
    settings (``IndexInfo.search_params``)."""
    from lancedb.index import HnswSq

    partitions = max(1, math.ceil(rows / ROWS_PER_PARTITION))
    config = HnswSq(
        distance_type=METRIC, num_partitions=partitions, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION
    )
    described = {
        "type": ANN_TYPE,
        "metric": METRIC,
        "num_partitions": partitions,
        "m": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
    }
    search = {"ef": SEARCH_EF, "nprobes": partitions, "refine_factor": SEARCH_REFINE}
    return config, described, search


def index_schema(ds: EmbeddingDataset) -> Any:
    """The index table's schema: ``_row`` (int64), then the dataset's columns with a float32 embedding."""
    pa, pq = pyarrow()
    files = ds.shard_files()
    rows = pq.read_schema(files[0]) if files else row_schema(ds.dim, ds.settings.storage, [])
    if ROW in rows.names:
        raise VectorIndexError(f"{ds.root} has a metadata column named {ROW!r}, which the index reserves")
    fields = [pa.field(ROW, pa.int64(), nullable=False)]
    for f in rows:
        fields.append(pa.field(VECTOR, pa.list_(pa.float32(), ds.dim)) if f.name == VECTOR else f)
    return pa.schema(fields)  # without the shards' Parquet metadata


def _index_batches(ds: EmbeddingDataset, schema: Any, batch_size: int) -> Iterator[Any]:
    """The dataset's rows as record batches of ``schema``: ``_row`` numbered from 0 in dataset order."""
    pa, _ = pyarrow()
    position = 0
    for batch in ds.batches(batch_size=batch_size):
        n = batch.num_rows
        arrays = [pa.array(np.arange(position, position + n, dtype=np.int64))]
        for f in schema:
            if f.name == ROW:
                continue
            column = batch.column(f.name)
            if f.name == VECTOR:  # float16 storage -> float32; flatten() honours a sliced batch's offset
                column = pa.FixedSizeListArray.from_arrays(column.flatten().cast(pa.float32()), ds.dim)
            elif column.type != f.type:
                column = column.cast(f.type)  # a shard whose column was all null (pyarrow's null type)
            arrays.append(column)
        position += n
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    if position != len(ds):
        raise VectorIndexError(
            f"{ds.root}: the shards hold {position} rows, the manifest says {len(ds)}; the dataset is damaged"
        )


def _train_ann(table: Any, rows: int) -> tuple[dict[str, Any], dict[str, int]]:
    config, described, search = ann_settings(rows)
    table.create_index(VECTOR, config=config)
    return described, search


def _replace(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``: the old index is moved aside first, put back if the move of
    the new one fails, and removed after it succeeded."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=target.parent))
        os.replace(target, old / "old")
    try:
        os.replace(new, target)
    except OSError as e:
        if old is not None:
            os.replace(old / "old", target)
        raise OutputError(f"cannot move the new index to {target}: {e.strerror or e}") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Remove temporary folders that a killed build left in ``root``."""
    for path in root.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _version() -> str:
    from .. import __version__

    return __version__
