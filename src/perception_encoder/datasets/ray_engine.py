"""The Ray engine: the same dataset job on Ray Data, over a cluster or a local Ray started for the job.

Reading and decoding run as CPU tasks, the model in a pool of actors (``replicas``, ``gpus_per_replica``),
and each shard is gathered (``groupby``) and written by a worker, so the driver holds only the list of
inputs of the shards in flight. The dataset is the one the local engine writes (same layout, same rows in
the same shards, embeddings equal to float rounding: the batches differ), and it resumes the same way: the
driver checks the shards already written and sends only the others.

Ray is imported only here (``pip install -e ".[ray]"``). ``address`` (or ``RAY_ADDRESS``) joins a cluster;
without one, a local Ray is started for the job and stopped after it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .items import InputItem
from .job import Job, prepare_output
from .local import DatasetSummary, _check_same, _Fingerprinted, check_no_extra_shards, shards_of
from .manifest import ShardRecord, write_manifest
from .shards import row_schema, write_shard

#: Memory a decoding task asks Ray for (~560 MiB measured: the process with torch and a batch of images;
#: a request unlike the actors' is also what keeps decoding a stage of its own).
DECODE_MEMORY = 768 << 20
#: Shards sent to Ray in one execution, and the inputs they may hold together (a window holds at least one
#: shard): bounds what the driver and the object store hold at once. Inputs from tables of image bytes
#: carry their bytes, so such jobs want a smaller --shard-size on Ray.
SHARDS_IN_FLIGHT = 8
INPUTS_IN_FLIGHT = 100_000


def _ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError("the ray engine needs Ray Data: pip install -e '.[ray]'") from exc
    return ray


# Columns between stages have one Arrow type in every block: items and pixels travel pickled (bytes; an
# item that could not be loaded has empty pixels and a reason), embeddings as a (B, D) float array.


def _decode(batch: dict[str, np.ndarray], job: Job, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Ray CPU task: a batch of items -> their pixels (or the reason they cannot be used)."""
    from ..embedding.files import _load_one
    from ..transforms import image_transform
    from .loading import ItemLoader

    transform = image_transform(image_size, high_bit_depth=job.high_bit_depth)
    load = ItemLoader(transform, job.num_frames, job.fetch_timeout, job.fetch_retries)
    pixels, reasons, items = [], [], []
    for blob in batch["item"]:
        item = pickle.loads(blob)
        x, err, _ = _load_one(load, item)
        pixels.append(b"" if x is None else pickle.dumps(x.numpy(), protocol=5))
        reasons.append(err or "")
        items.append(pickle.dumps(dataclasses.replace(item, data=None)))  # the bytes are read: not carried on
    return {
        "shard": batch["shard"],
        "position": batch["position"],
        "item": np.array(items, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "reason": np.array(reasons, dtype=object),
    }


class _Encode:
    """Ray actor: holds the model; a batch of pixels -> embeddings (rows that failed to load pass through)."""

    def __init__(self, job: Job, threads: int | None, dim: int) -> None:
        import torch

        from .local import _encoder

        if threads:
            torch.set_num_threads(threads)
        device = job.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        model = job.load_model(device=device)
        self.encode = _encoder(job, model)
        self.dim = dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        good = [i for i, reason in enumerate(batch["reason"]) if not reason]
        embeddings = np.zeros((len(batch["reason"]), self.dim), np.float32)
        if good:
            pixels = [torch.from_numpy(pickle.loads(batch["pixels"][i])) for i in good]
            with torch.inference_mode():
                embeddings[good] = self.encode(pixels).float().numpy()
        return {
            "shard": batch["shard"],
            "position": batch["position"],
            "item": batch["item"],
            "reason": batch["reason"],
            "embedding": embeddings,
        }


def _write(
    group: dict[str, np.ndarray], root: str, records: dict[int, tuple[int, int, str]], schema: Any, dim: int
) -> dict[str, np.ndarray]:
    """Ray task: one shard's rows, gathered, sorted by position and written (``shards.write_shard``)."""
    k = int(group["shard"][0])
    order = np.argsort(group["position"], kind="stable")
    rows: list[InputItem] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[InputItem, str]] = []
    for i in order:
        item = pickle.loads(group["item"][i])
        if group["reason"][i]:
            skipped.append((item, group["reason"][i]))
        else:
            rows.append(item)
            vectors.append(group["embedding"][i])
    first, count, fingerprint = records[k]
    record = ShardRecord(k, first, count, len(rows), len(skipped), fingerprint)
    embeddings = np.stack(vectors) if vectors else np.empty((0, dim), np.float32)
    write_shard(root, record, rows, embeddings, skipped, schema)
    return {"record": np.array([pickle.dumps(record)], dtype=object)}


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` / ``RAY_ADDRESS``, else start a local Ray; True when started here."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
        return False
    ray.init(**kwargs)
    return True


def _pending_shards(
    job: Job, root: Path, manifest: Any, size: int
) -> Iterator[tuple[int, list[InputItem], tuple[int, int, str]]]:
    """``(k, items, (first, count, fingerprint))`` of each shard still to write; done ones are checked, and
    so is the end (``check_no_extra_shards``) once every shard was listed."""
    from .sources import iter_inputs

    items = iter_inputs(list(job.inputs), image_column=job.image_column, id_column=job.id_column)
    listed = 0
    for k, shard_items in shards_of(items, size):
        listed = k + 1
        printed = _Fingerprinted(shard_items)
        inputs = list(printed)
        done = manifest.shard(k)
        if done is not None:
            _check_same(root, done, printed)
            continue
        yield k, inputs, (printed.first or 0, printed.count, printed.hexdigest())
    check_no_extra_shards(root, manifest, listed)


def _window(pending: Iterator[tuple[int, list[InputItem], tuple[int, int, str]]]) -> list:
    """The next shards to send: up to ``SHARDS_IN_FLIGHT``, and ``INPUTS_IN_FLIGHT`` inputs after the first."""
    window: list = []
    for shard in pending:
        window.append(shard)
        if len(window) == SHARDS_IN_FLIGHT or sum(len(items) for _, items, _ in window) >= INPUTS_IN_FLIGHT:
            break
    return window


def run_ray(
    job: Job,
    root: Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
    address: str | None = None,
    replicas: int | None = None,
    gpus_per_replica: float = 0.0,
    threads_per_replica: int | None = None,
) -> DatasetSummary:
    """Run ``job`` on Ray into ``root`` (see the module docstring)."""
    ray = _ray()
    from ray.data import ActorPoolStrategy

    from .sources import metadata_schema

    started = time.time()
    model = job.load_model(device="cpu")  # the settings (dimension, weights' hash), on the driver
    settings = job.settings(model)
    image_size = job.input_size(model)
    del model
    schema = row_schema(
        settings.dim,
        settings.storage,
        metadata_schema(list(job.inputs), image_column=job.image_column, id_column=job.id_column),
    )
    manifest = prepare_output(root, settings, overwrite=overwrite)
    kept = len(manifest.shards)
    started_here = _connect(address)
    written = 0
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_replicas = replicas or (max(1, int(gpus // gpus_per_replica)) if gpus_per_replica else 1)
        threads = threads_per_replica or max(1, cpus // n_replicas)
        pending = _pending_shards(job, root, manifest, settings.shard_size)
        while True:
            window = _window(pending)
            if not window:
                break
            rows = [
                {"shard": k, "position": item.position, "item": pickle.dumps(item)}
                for k, items, _ in window
                for item in items
            ]
            records = {k: meta for k, _, meta in window}
            ds = ray.data.from_items(rows)
            # decoding stays in its own CPU tasks, beside the model rather than before it in the model's process:
            # its memory request differs from the actors', which keeps Ray Data from fusing the two stages
            ds = ds.map_batches(
                _decode,
                fn_args=(job, image_size),
                batch_size=job.batch_size,
                num_cpus=1,
                memory=DECODE_MEMORY,
            )
            ds = ds.map_batches(
                _Encode,
                fn_constructor_args=(job, threads, settings.dim),
                batch_size=job.batch_size,
                compute=ActorPoolStrategy(size=n_replicas),
                num_cpus=0 if gpus_per_replica else 1,
                num_gpus=gpus_per_replica or None,
            )
            ds = ds.groupby("shard", num_partitions=len(window)).map_groups(
                _write, fn_args=(str(root), records, schema, settings.dim), batch_format="numpy"
            )
            for out in ds.take_all():
                manifest.shards.append(pickle.loads(out["record"]))
                written += 1
            write_manifest(root, manifest)
    finally:
        if started_here:
            ray.shutdown()
    manifest.complete = True
    write_manifest(root, manifest)
    return DatasetSummary(root, manifest.rows, manifest.skipped, written, kept, time.time() - started, True)
