"""``index/index.json``: what an index holds (which dataset rows, built how), and whether it is stale.

An index is built from the dataset's manifest as it was at the time; it records the rows it holds, the
manifest's ``updated`` stamp and a fingerprint of the manifest's settings and shards. When the dataset on
disk no longer matches (``pe embed`` added shards, or rewrote it with ``--overwrite``), the index is stale:
``open_index`` refuses it, and the message says to rerun ``pe index``. (Stale results are never served
silently: rows that are not in the index would be missing from every result.)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..datasets.manifest import Manifest
from ..input_files import parse_json, read_text
from .errors import VectorIndexError

INFO_FILE = "index.json"
FORMAT = "perception_encoder.vector_index"
VERSION = 1


def dataset_fingerprint(manifest: Manifest) -> str:
    """SHA-256 of the manifest's settings and shard records: equal exactly when the rows are the same."""
    data = {"settings": manifest.settings.to_dict(), "shards": [asdict(s) for s in manifest.shards]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass
class IndexInfo:
    """What ``build_index`` wrote.

    ``rows``: the dataset rows held (positions ``0 .. rows - 1``); ``dataset_updated`` /
    ``dataset_fingerprint``: the manifest they came from; ``columns``: the table's columns after ``_row``
    (``id``, ``source``, ``embedding``, the metadata columns); ``ann``: ``None`` for exact (flat) search
    only, else the ANN index's type, build settings and the search settings measured for it
    (``search_params``); ``seconds``: the build time."""

    rows: int
    dim: int
    dataset_updated: str
    dataset_fingerprint: str
    columns: list[str]
    ann: dict[str, Any] | None = None
    search_params: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    built: str = ""
    library_version: str = ""

    @property
    def metadata_columns(self) -> list[str]:
        return [c for c in self.columns if c not in ("id", "source", "embedding")]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> IndexInfo:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise VectorIndexError(f"{where} is not an index of this library version; rerun `pe index`")
        try:
            return cls(**{k: v for k, v in data.items() if k not in ("format", "version")})
        except TypeError as e:
            raise VectorIndexError(f"{where}: malformed index description ({e}); rerun `pe index`") from e


def write_info(folder: str | os.PathLike, info: IndexInfo) -> Path:
    text = json.dumps(info.to_dict(), indent=2) + "\n"
    return atomic_write(Path(folder) / INFO_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_info(folder: str | os.PathLike) -> IndexInfo:
    path = Path(folder) / INFO_FILE
    text = read_text(path, "index description", error=VectorIndexError)
    return IndexInfo.from_dict(parse_json(text, str(path), VectorIndexError), str(path))


def staleness(info: IndexInfo, manifest: Manifest) -> str | None:
    """Why an index no longer matches the dataset's ``manifest`` (``None`` when it still does)."""
    if info.dataset_fingerprint == dataset_fingerprint(manifest) and info.rows == manifest.rows:
        return None
    return (
        f"it holds {info.rows:,} rows of the dataset as of {info.dataset_updated or '?'}; the dataset now has "
        f"{manifest.rows:,} rows (updated {manifest.updated or '?'})"
    )
