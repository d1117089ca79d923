"""``manifest.json``: what makes the rows of an embedding dataset comparable, and the shards written so far.

``settings`` holds everything that changes an embedding (model, checkpoint SHA-256, dtype, features,
normalisation, frames per video, preprocessing, storage dtype, dimension), plus what decides which input
lands in which shard (the inputs as given, the table columns used, the shard size). A job writing into an
existing dataset must have equal settings; ``settings_difference`` names what differs. The manifest is
rewritten (atomically) after every shard, so it always describes complete shards only.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import PEError
from ..input_files import parse_json, read_text
from .layout import FORMAT, MANIFEST, VERSION


class DatasetError(PEError, ValueError):
    """A dataset that cannot be read or written as asked: not ours, other settings, inputs that changed."""


@dataclass(frozen=True)
class Settings:
    """What a dataset's rows were computed with. Two jobs may share a dataset only when these are equal."""

    model: str
    checkpoint: str | None
    checkpoint_sha256: str
    dtype: str
    pool: str
    layer: int | None
    normalize: bool
    frames: int
    image_size: tuple[int, int]
    resize: str  # "squash": the reference preprocessing
    high_bit_depth: str
    storage: str  # "float32" or "float16"
    dim: int
    shard_size: int
    inputs: tuple[str, ...]
    image_column: str | None = None
    id_column: str | None = None

    def weights(self) -> tuple[str, str | None]:
        """``(name, checkpoint)`` for ``pe.load(name, checkpoint=checkpoint)``: a checkpoint equal to the model
        (a path given alone) is not passed twice."""
        return self.model, (None if self.checkpoint in (None, self.model) else self.checkpoint)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["inputs"] = list(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"manifest settings have unknown key(s): {', '.join(unknown)}")
        data = dict(data)
        data["image_size"] = tuple(data["image_size"])
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


def settings_difference(ours: Settings, theirs: Settings) -> list[str]:
    """``"name: X here, Y in the dataset"`` for every setting that differs (empty when they are equal)."""
    a, b = ours.to_dict(), theirs.to_dict()
    return [f"{k}: {a[k]!r} here, {b[k]!r} in the dataset" for k in a if a[k] != b[k]]


@dataclass
class ShardRecord:
    """A shard written: ``inputs`` inputs from position ``first``; ``rows`` of them embedded, ``skipped`` not;
    ``ids_sha256`` fingerprints their ids in order (a resumed job checks its inputs still give the same)."""

    index: int
    first: int
    inputs: int
    rows: int
    skipped: int
    ids_sha256: str


@dataclass
class Manifest:
    settings: Settings
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    library_version: str = ""
    created: str = ""
    updated: str = ""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.shards)

    def shard(self, index: int) -> ShardRecord | None:
        return next((s for s in self.shards if s.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "library_version": self.library_version,
            "created": self.created,
            "updated": self.updated,
            "complete": self.complete,
            "rows": self.rows,
            "skipped": self.skipped,
            "settings": self.settings.to_dict(),
            "shards": [asdict(s) for s in sorted(self.shards, key=lambda s: s.index)],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DatasetError(f"{where} is not the manifest of an embedding dataset (no format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise DatasetError(
                f"{where}: dataset format version {data.get('version')!r}; this library reads {VERSION}"
            )
        try:
            return cls(
                settings=Settings.from_dict(data["settings"]),
                shards=[ShardRecord(**s) for s in data.get("shards", [])],
                complete=bool(data.get("complete", False)),
                library_version=str(data.get("library_version", "")),
                created=str(data.get("created", "")),
                updated=str(data.get("updated", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: malformed manifest ({e})") from e


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(root: str | os.PathLike) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{root} is not an embedding dataset: it has no {MANIFEST} (made by pe embed --out DIR)"
        )
    text = read_text(path, "dataset manifest", error=DatasetError)
    return Manifest.from_dict(parse_json(text, str(path), DatasetError), str(path))


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (a reader never sees half of it), stamping the times."""
    from .. import __version__

    manifest.library_version = __version__
    manifest.created = manifest.created or _now()
    manifest.updated = _now()
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    return atomic_write(Path(root) / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
