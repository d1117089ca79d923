"""The local engine: a dataset job on this machine, streaming (inputs listed lazily, decoded in loader
processes ahead of the model, rows written shard by shard), resumable after any kill.

    import perception_encoder as pe
    summary = pe.embed_dataset(["photos/", "shards-{0000..0009}.tar"], "emb/", model="PE-Core-B16-224")
    ds = pe.open_dataset("emb/")

Shard ``k`` holds inputs ``k*S`` to ``(k+1)*S - 1``. A shard already on disk is never recomputed or
rewritten: its inputs are listed again (without reading their pixels) only to check that they are still
the same ones (``ids_fingerprint``); a job whose inputs changed since is refused. Each shard's batches start
at the shard's first input, so a resumed job computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding.encoders import as_encoder
from ..embedding.files import iter_embedded
from ..embedding.pipeline import media_encoder
from .items import InputItem
from .job import Job, prepare_output
from .manifest import DatasetError, Manifest, ShardRecord, write_manifest
from .shards import fingerprint_line, row_schema, write_shard


@dataclass
class DatasetSummary:
    """What a job did: rows and skipped inputs in the whole dataset, shards written now and found done."""

    root: Path
    rows: int
    skipped: int
    shards_written: int
    shards_kept: int
    seconds: float
    complete: bool


# --- the engine -----------------------------------------------------------------------------------------


def shards_of(items: Iterator[InputItem], size: int) -> Iterator[tuple[int, Iterator[InputItem]]]:
    """``(k, the items of shard k)`` in order, lazily; each shard's iterator must be used up before the next."""
    stream = iter(items)
    for k in itertools.count():
        head = next(stream, None)
        if head is None:
            return
        yield k, itertools.chain([head], itertools.islice(stream, size - 1))


class _Fingerprinted:
    """An item iterator that hashes every item passing through (``ids_fingerprint``, incrementally)."""

    def __init__(self, items: Iterator[InputItem]) -> None:
        self.items = items
        self.count = 0
        self.first: int | None = None
        self._h = hashlib.sha256()

    def __iter__(self) -> Iterator[InputItem]:
        for item in self.items:
            self.first = item.position if self.first is None else self.first
            self.count += 1
            self._h.update(fingerprint_line(item))
            yield item

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _encoder(job: Job, model: Any) -> Any:
    """The ``iter_embedded`` encoder of a job (``embedding.media_encoder``: images and videos, normalised
    rows when asked)."""
    features = as_encoder(model).features(job.features)
    return media_encoder(features, normalize=job.normalize, batch_size=job.batch_size)


def _describe(item: InputItem) -> str:
    return f"{item.source}: {item.id}" if item.source != item.id else item.id


def embed_shard(
    job: Job, items: Iterator[InputItem], load: Any, encode: Any, dim: int, storage: str
) -> tuple[list[InputItem], np.ndarray, list[tuple[InputItem, str]]]:
    """One shard's rows (items without their bytes), embeddings ``(rows, dim)`` and skipped inputs."""
    rows: list[InputItem] = []
    skipped: list[tuple[InputItem, str]] = []
    chunks: list[np.ndarray] = []
    results = iter_embedded(
        items, load, encode, batch_size=job.batch_size, num_workers=job.num_workers, name=_describe
    )
    for result in results:
        item = dataclasses.replace(result.item, data=None)  # the bytes are not needed any more
        if result.reason is not None:
            skipped.append((item, result.reason))
        else:
            rows.append(item)
            chunks.append(result.embedding.numpy().astype(np.float16 if storage == "float16" else np.float32))
    embeddings = np.stack(chunks) if chunks else np.empty((0, dim), np.float32)
    return rows, embeddings, skipped


def run_local(job: Job, root: Path, *, overwrite: bool = False, progress: bool = False) -> DatasetSummary:
    """Run ``job`` on this machine into ``root`` (see the module docstring)."""
    from .sources import iter_inputs, metadata_schema

    started = time.time()
    model = job.load_model()
    settings = job.settings(model)
    schema = row_schema(
        settings.dim,
        settings.storage,
        metadata_schema(list(job.inputs), image_column=job.image_column, id_column=job.id_column),
    )
    manifest = prepare_output(root, settings, overwrite=overwrite)
    load, encode = job.loader(model), _encoder(job, model)
    items = iter_inputs(list(job.inputs), image_column=job.image_column, id_column=job.id_column)
    bar = _bar(progress, manifest, job)
    written = kept = listed = 0
    for k, shard_items in shards_of(items, settings.shard_size):
        listed = k + 1
        printed = _Fingerprinted(shard_items)
        done = manifest.shard(k)
        if done is not None:
            for _ in printed:  # listed again, not loaded: only to check they are the same inputs
                pass
            _check_same(root, done, printed)
            kept += 1
            continue
        rows, embeddings, skipped = embed_shard(
            job, iter(_Progress(printed, bar)), load, encode, settings.dim, settings.storage
        )
        record = ShardRecord(
            k, printed.first or 0, printed.count, len(rows), len(skipped), printed.hexdigest()
        )
        write_shard(root, record, rows, embeddings, skipped, schema)
        manifest.shards.append(record)
        write_manifest(root, manifest)
        written += 1
    check_no_extra_shards(root, manifest, listed)
    manifest.complete = True
    write_manifest(root, manifest)
    if bar is not None:
        bar.close()
    return DatasetSummary(root, manifest.rows, manifest.skipped, written, kept, time.time() - started, True)


def _check_same(root: Path, record: ShardRecord, printed: _Fingerprinted) -> None:
    if printed.count != record.inputs or printed.hexdigest() != record.ids_sha256:
        raise DatasetError(
            f"{root}: the inputs of shard {record.index} changed since it was written ({record.inputs} inputs "
            f"then, {printed.count} now, or other names): files were added or removed. Use --overwrite to start "
            "afresh, or a new output folder"
        )


def check_no_extra_shards(root: Path, manifest: Manifest, listed: int) -> None:
    """Refuse a dataset holding shards past the ``listed`` shards of the inputs: inputs were removed."""
    extra = sorted(s.index for s in manifest.shards if s.index >= listed)
    if extra:
        raise DatasetError(
            f"{root}: shard(s) {', '.join(map(str, extra))} hold inputs that are gone (the inputs give {listed} "
            "shard(s) now): files were removed. Use --overwrite to start afresh, or a new output folder"
        )


class _Progress:
    """Items passing to the model, counted on a progress bar (when there is one)."""

    def __init__(self, items: Any, bar: Any) -> None:
        self.items, self.bar = items, bar

    def __iter__(self) -> Iterator[InputItem]:
        for item in self.items:
            if self.bar is not None:
                self.bar.update(1)
            yield item


def count_inputs(job: Job) -> int:
    """How many inputs the job has (listing them once more, without reading any pixels)."""
    from .sources import iter_inputs

    return sum(
        1 for _ in iter_inputs(list(job.inputs), image_column=job.image_column, id_column=job.id_column)
    )


def _bar(progress: bool, manifest: Manifest, job: Job) -> Any:
    """A progress bar over the inputs still to embed (inputs/s and the time left)."""
    if not progress:
        return None
    from tqdm import tqdm

    done = sum(s.inputs for s in manifest.shards)
    return tqdm(
        total=max(0, count_inputs(job) - done),
        desc="embedding",
        unit="input",
        file=sys.stderr,
        dynamic_ncols=True,
    )
