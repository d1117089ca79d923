"""Embedding datasets: every input of a collection (files, folders, globs, WebDataset tars, CSV / Parquet
tables of paths, URLs or image bytes) streamed through a model into sharded Parquet files with a manifest,
resumable after a kill, on this machine or a Ray cluster.

- ``layout``: the files of a dataset; ``manifest``: its settings and shards; ``shards``: writing them;
- ``items`` / ``sources`` / ``fetch`` / ``loading``: the inputs, listed lazily and loaded one by one;
- ``embed``: ``embed_dataset``, a job run by an engine: ``local`` (this machine) or ``ray_engine`` (Ray Data);
- ``dataset``: reading a dataset back (``open_dataset``) and embedding queries the way its rows were.
"""

from .dataset import EmbeddingDataset, open_dataset
from .manifest import DatasetError, Manifest, Settings

__all__ = ["DatasetError", "EmbeddingDataset", "Manifest", "Settings", "open_dataset"]
