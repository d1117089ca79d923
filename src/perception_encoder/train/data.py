"""Image-caption (and clip-caption) data for training: sources, a deterministic batch order, collation.

Sources (``open_source``), all map-style so the order can be shuffled by seed and resumed mid-epoch:

- ``FolderSource``: every image under a folder, its caption in a ``.txt`` file beside it (same stem);
- ``TableSource``: a ``.csv`` / ``.tsv`` / ``.parquet`` table with a path and a caption column;
- ``TarSource``: WebDataset-style ``.tar`` shards read with ``tarfile``; members are grouped by key (the
  member path up to the first dot of its file name: ``a/0001.jpg`` and ``a/0001.txt`` are one sample).
  Shards are indexed once (member offsets) and read by seeking, so samples are random-access;
- ``SyntheticSource``: the built-in shapes generator (``train.synthetic``).

A bad sample (unreadable image, missing or empty caption, undecodable video) never stops a run: loading it
returns a ``BadSample`` that the collator drops and counts; the trainer logs the count.

Order: epoch ``e`` visits the samples in ``torch.randperm`` order seeded by ``(seed, e)``; each global batch
is split into contiguous per-rank slices. The position ``(epoch, index within epoch)`` is all a resume needs.
Each sample's augmentation is seeded by ``(seed, epoch, sample index)``.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import IMAGE_EXTENSIONS, is_image_file, iter_image_files, load_image
from ..input_files import parse_json
from .augment import TrainTransform
from .config import DataConfig

_PATH_COLUMNS = ("path", "image", "filepath", "file", "filename", "image_path", "video", "video_path")
_CAPTION_COLUMNS = ("caption", "text", "title", "label")
_TAR_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_TAR_CAPTION_EXTS = ("txt", "caption", "text", "json")


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names the sample and the reason."""


@dataclass(frozen=True)
class RawSample:
    """What a source yields: one image (or a clip of frames) and its caption."""

    image: Image.Image | list[Image.Image]
    caption: str


# --- sources ----------------------------------------------------------------------------------------------


class Source:
    """A random-access list of image-caption pairs. ``load`` raises ``BadSampleError`` for a bad entry."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> RawSample:
        raise NotImplementedError


def _clean_caption(text: str | None, where: str) -> str:
    caption = (text or "").strip()
    if not caption:
        raise BadSampleError(f"{where}: empty caption")
    return caption


def _open_image(source, where: str) -> Image.Image:
    try:
        return load_image(source)
    except (ValueError, OSError) as e:  # ImageLoadError is a ValueError
        raise BadSampleError(f"{where}: {e}") from None


def _open_clip(path: Path, frames: int, where: str) -> list[Image.Image]:
    """``frames`` frames of a video file or of a folder of frame images, as RGB PIL images."""
    from .. import video

    try:
        if path.is_dir():
            files = video.list_frame_files(path)
            return [
                load_image(files[i]).convert("RGB")
                for i in video.sample_frame_indices(len(files), frames, repeat=True)
            ]
        array = video.load_video(path, frames, repeat=True)  # uint8 (N, H, W, 3): clips of one size
        return [Image.fromarray(f.numpy(), "RGB") for f in array]
    except (ValueError, OSError, ImportError) as e:
        raise BadSampleError(f"{where}: {e}") from None


class FolderSource(Source):
    """Every image under ``root`` (recursively, sorted); the caption is ``<same stem>.txt`` beside it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {str(self.root)!r} does not exist")
        self.paths = iter_image_files(self.root)
        if not self.paths:
            raise ValueError(
                f"data folder {str(self.root)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> RawSample:
        path = self.paths[index]
        txt = path.with_suffix(".txt")
        if not txt.is_file():
            raise BadSampleError(f"{path}: no caption file {txt.name}")
        caption = _clean_caption(txt.read_text(encoding="utf-8", errors="replace"), str(path))
        return RawSample(_open_image(path, str(path)), caption)


def _pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str
) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{where}: no {what} column {wanted!r}; columns are {list(columns)}")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lowered:
            return lowered[c]
    raise ValueError(
        f"{where}: cannot find the {what} column among {list(columns)}; name it with "
        f"--{what}-column (tried {', '.join(candidates)})"
    )


class TableSource(Source):
    """Rows of a CSV/TSV/Parquet table; paths are relative to the table's folder unless absolute.

    With ``frames`` set, each path is a video file or a folder of frames and samples are clips.
    """

    def __init__(
        self,
        table: str | Path,
        path_column: str | None = None,
        caption_column: str | None = None,
        frames: int | None = None,
    ) -> None:
        self.table = Path(table)
        if not self.table.is_file():
            raise FileNotFoundError(f"data table {str(self.table)!r} does not exist")
        columns, rows = _read_table(self.table)
        where = f"data table {str(self.table)!r}"
        pcol = _pick_column(columns, path_column, _PATH_COLUMNS, "path", where)
        ccol = _pick_column(columns, caption_column, _CAPTION_COLUMNS, "caption", where)
        self.paths = [None if r.get(pcol) in (None, "") else str(r[pcol]) for r in rows]
        self.captions = [None if r.get(ccol) is None else str(r[ccol]) for r in rows]
        self.frames = frames
        if not self.paths:
            raise ValueError(f"{where} has no rows")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> RawSample:
        raw = self.paths[index]
        where = f"{self.table.name} row {index + 1}"
        if raw is None:
            raise BadSampleError(f"{where}: empty path")
        path = Path(raw) if os.path.isabs(raw) else self.table.parent / raw
        caption = _clean_caption(self.captions[index], f"{where} ({raw})")
        if self.frames is not None:
            return RawSample(_open_clip(path, self.frames, f"{where} ({raw})"), caption)
        return RawSample(_open_image(path, f"{where} ({raw})"), caption)


def _read_table(path: Path) -> tuple[list[str], list[dict]]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "reading .parquet needs pyarrow: pip install 'perception-encoder[train]'"
            ) from None
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    with path.open(newline="", encoding="utf-8") as f:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from ``spec``: ``::``-separated parts, each a path, a glob, or a ``{000..009}`` range."""
    out: list[Path] = []
    for part in spec.split("::"):
        for name in _expand_braces(part.strip()):
            matches = sorted(glob.glob(name)) if any(ch in name for ch in "*?[") else [name]
            if not matches:
                raise FileNotFoundError(f"no tar shard matches {name!r}")
            for m in matches:
                if not Path(m).is_file():
                    raise FileNotFoundError(f"tar shard {m!r} does not exist")
                out.append(Path(m))
    return out


_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(name: str) -> list[str]:
    m = _BRACE.search(name)
    if not m:
        return [name]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(_expand_braces(name[: m.start()] + str(i).zfill(width) + name[m.end() :]))
    return out


@dataclass(frozen=True)
class _Member:
    shard: int
    offset: int
    size: int


class TarSource(Source):
    """WebDataset-style shards. A sample is the group of members sharing a key; its image is the member
    with an image extension, its caption the ``txt`` / ``caption`` / ``text`` member or the ``caption``
    (or ``text``) field of a ``json`` member. Groups with no image (only metadata) are bad samples too, so
    they are counted rather than silently dropped."""

    def __init__(self, spec: str) -> None:
        self.shards = expand_shards(spec)
        self.groups: list[tuple[str, dict[str, _Member]]] = []
        self.index_errors: list[str] = []
        for si, shard in enumerate(self.shards):
            self._index(si, shard)
        if not self.groups:
            raise ValueError(f"tar shards {spec!r} hold no samples")
        self._handles: dict[int, object] = {}
        self._pid = -1

    def _index(self, si: int, shard: Path) -> None:
        groups: dict[str, dict[str, _Member]] = {}
        file_size = shard.stat().st_size
        try:
            with tarfile.open(shard, mode="r:") as tf:  # uncompressed: members are readable by offset
                for info in tf:
                    if not info.isfile():
                        continue
                    directory, _, base = info.name.rpartition("/")
                    if base.startswith("."):
                        continue
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    key = f"{directory}/{stem}" if directory else stem
                    if info.offset_data + info.size > file_size:
                        # tarfile stops quietly at a cut; the sample stays indexed and loads as a bad one
                        self.index_errors.append(
                            f"{shard}: member {info.name} is cut short (truncated shard)"
                        )
                    groups.setdefault(key, {})[ext.lower()] = _Member(si, info.offset_data, info.size)
        except (tarfile.TarError, OSError) as e:
            # a truncated shard: keep what was indexed before the damage, and say so
            self.index_errors.append(f"{shard}: {e}")
        self.groups.extend((f"{shard.name}:{k}", v) for k, v in groups.items())

    def __len__(self) -> int:
        return len(self.groups)

    def _read(self, m: _Member) -> bytes:
        if self._pid != os.getpid():  # handles opened before a fork must not be shared with workers
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(m.shard)
        if f is None:
            f = self._handles[m.shard] = open(self.shards[m.shard], "rb")  # noqa: SIM115
        f.seek(m.offset)
        data = f.read(m.size)
        if len(data) != m.size:
            raise BadSampleError(f"{self.shards[m.shard]}: member truncated at offset {m.offset}")
        return data

    def load(self, index: int) -> RawSample:
        key, members = self.groups[index]
        image = next((members[e] for e in _TAR_IMAGE_EXTS if e in members), None)
        if image is None:
            raise BadSampleError(f"{key}: no image member (has {', '.join(sorted(members))})")
        caption = None
        for ext in _TAR_CAPTION_EXTS:
            if ext in members:
                text = self._read(members[ext]).decode("utf-8", errors="replace")
                if ext == "json":
                    meta = parse_json(text, f"{key}: json member", error=BadSampleError)
                    text = meta.get("caption") or meta.get("text") if isinstance(meta, dict) else None
                caption = text
                break
        if caption is None:
            raise BadSampleError(f"{key}: no caption member (txt, caption, text or json)")
        caption = _clean_caption(caption, key)
        return RawSample(_open_image(self._read(image), key), caption)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # file handles do not pickle
        return state


class SyntheticSource(Source):
    """``count`` pairs of the shapes generator (training split), drawn on demand."""

    def __init__(self, count: int, seed: int = 0, image_size: int = 64, split: str = "train") -> None:
        from .synthetic import ShapesGenerator

        if count < 1:
            raise ValueError(f"synthetic data needs at least one sample, got {count}")
        self.count = count
        self.split = split
        self.generator = ShapesGenerator(seed, image_size)

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> RawSample:
        s = self.generator.sample(index, self.split)
        return RawSample(s.image, s.caption)


def detect_kind(source: str) -> str:
    """Guess the reader for ``data.source``: synthetic, folder, csv, parquet or tar."""
    if source == "synthetic" or source.startswith("synthetic:"):
        return "synthetic"
    if Path(source).is_dir():
        return "folder"
    suffix = Path(source).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    if ".tar" in source:
        return "tar"
    if is_image_file(source):
        raise ValueError(f"data source {source!r} is a single image; give a folder, a table or tar shards")
    raise ValueError(
        f"cannot tell what data source {source!r} is: expected a folder, a .csv/.tsv/.parquet table, "
        "tar shards (*.tar) or 'synthetic[:N]'"
    )


def open_source(config: DataConfig, image_size: int = 64) -> Source:
    """The source described by ``config`` (``image_size``: the drawing size of synthetic data)."""
    kind = detect_kind(config.source) if config.kind == "auto" else config.kind
    if config.frames is not None and kind not in ("csv", "parquet"):
        raise ValueError(
            "video training (data.frames) reads clips from a .csv/.parquet table of paths + captions"
        )
    if kind == "synthetic":
        _, _, count = config.source.partition(":")
        try:
            n = int(count) if count else 10_000
        except ValueError:
            raise ValueError(
                f"synthetic data source must be 'synthetic' or 'synthetic:N', got {config.source!r}"
            ) from None
        return SyntheticSource(n, config.synthetic_seed, image_size)
    if kind == "folder":
        return FolderSource(config.source)
    if kind in ("csv", "parquet"):
        return TableSource(config.source, config.path_column, config.caption_column, config.frames)
    if kind == "tar":
        return TarSource(config.source)
    raise ValueError(f"unknown data kind {kind!r}")


# --- samples and batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleKey:
    """Which sample to load and how: dataset ``index``, augmentation ``seed``, output ``size``, and its
    position ``slot`` in the global batch (used to choose the samples that get masked)."""

    index: int
    seed: str
    size: int
    slot: int


@dataclass(frozen=True)
class BadSample:
    index: int
    reason: str


class TrainingDataset(Dataset):
    """Loads and augments one sample per ``SampleKey``; failures become ``BadSample``, never exceptions."""

    def __init__(self, source: Source, transform: TrainTransform, video: bool = False) -> None:
        self.source = source
        self.transform = transform
        self.video = video

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, str, int] | BadSample:
        try:
            raw = self.source.load(key.index)
            if self.video:
                pixels, caption = self.transform.clip(raw.image, raw.caption, key.size, key.seed)
            else:
                pixels, caption = self.transform(raw.image, raw.caption, key.size, key.seed)
        except BadSampleError as e:
            return BadSample(key.index, str(e))
        except (ValueError, OSError) as e:  # an image Pillow opens but cannot process
            return BadSample(key.index, f"sample {key.index}: {type(e).__name__}: {e}")
        return pixels, caption, key.slot


@dataclass
class Batch:
    """A collated micro-batch for one rank: ``pixels`` ``(b, 3, S, S)`` or clips ``(b, N, 3, S, S)``,
    ``token_ids`` ``(b, L)``, ``slots`` ``(b,)`` positions in the global batch, and the bad samples dropped."""

    pixels: torch.Tensor | None
    token_ids: torch.Tensor | None
    slots: torch.Tensor
    bad: list[BadSample]

    def __len__(self) -> int:
        return int(self.slots.numel())


class Collator:
    """Drops bad samples, stacks the rest and tokenises captions (picklable, runs in loader workers)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list) -> Batch:
        good = [it for it in items if not isinstance(it, BadSample)]
        bad = [it for it in items if isinstance(it, BadSample)]
        if not good:
            return Batch(None, None, torch.zeros(0, dtype=torch.long), bad)
        pixels = torch.stack([g[0] for g in good])
        tokens = self.tokenizer([g[1] for g in good])
        slots = torch.tensor([g[2] for g in good], dtype=torch.long)
        return Batch(pixels, tokens, slots, bad)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: a permutation of ``range(num_samples)``, fixed by the seed."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_samples, generator=g)


class EpochBatches:
    """Batch sampler over one epoch from ``start`` (a multiple of ``global_batch``): yields this rank's
    ``SampleKey`` lists. ``size_of(k)`` gives the image size of the k-th micro-batch of the run, where
    ``k = first_micro + batches yielded so far`` (progressive resolution)."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        seed: int,
        epoch: int,
        start: int,
        first_micro: int,
        size_of: Callable[[int], int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} processes")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed, self.epoch, self.start = seed, epoch, start
        self.first_micro, self.size_of = first_micro, size_of
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // global_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start // self.global_batch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch).tolist()
        local = self.global_batch // self.world_size
        first = self.start // self.global_batch
        for k, b in enumerate(range(first, self.batches_per_epoch)):
            size = self.size_of(self.first_micro + k)
            base = b * self.global_batch
            lo = self.rank * local
            yield [
                SampleKey(order[base + j], f"{self.seed}/{self.epoch}/{order[base + j]}", size, j)
                for j in range(lo, lo + local)
            ]


def write_tar_shard(path: str | Path, samples: Sequence[tuple[str, dict[str, bytes]]]) -> Path:
    """Write a WebDataset-style shard: ``samples`` are ``(key, {ext: bytes})`` pairs (a small helper for
    making shards from any source, e.g. ``{"png": ..., "txt": b"a red circle"}``)."""
    path = Path(path)
    with tarfile.open(path, mode="w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
