"""Files in, embeddings out: finding the inputs, loading each file, and the batching loop.

Every file is loaded on its own (optionally in DataLoader workers, so decoding overlaps encoding); a file
that fails to load becomes a :class:`Skipped` record with its reason, and the rest of its batch goes on.
A name given on the command line that does not exist, and a sub-folder that cannot be listed, are
skipped and reported the same way. Warnings raised while loading (a 16-bit image converted as the
reference does) are collected and reported once per run, not once per file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import PEError
from ..finite import NonFiniteError
from ..images import IMAGE_EXTENSIONS
from ..input_files import find_files
from ..limits import MAX_BATCH_SIZE


@dataclass
class Skipped:
    """An input that could not be used, and why."""

    path: str
    reason: str


@dataclass
class Embedded:
    """Embeddings of the files that loaded: ``values[j]`` belongs to input file ``index[j]``."""

    values: torch.Tensor  # (M, D) float32, CPU
    index: list[int]
    skipped: list[Skipped]
    notes: list[str] = field(default_factory=list)  # distinct warnings raised while loading


@dataclass
class Inputs:
    """Files found in the names given (in order, without duplicates), and the names that were skipped."""

    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)


def check_batch_size(batch_size: int) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE:,}, got {batch_size!r}")
    return batch_size


def expand_inputs(paths: Sequence[str | os.PathLike], *, videos: bool = True) -> Inputs:
    """Files and folders -> the files to embed: every file named (whatever its extension: a bad one is
    reported when it is loaded), and the images (and videos, when ``videos``) found in each folder,
    recursively (``input_files.find_files``). Names that do not exist and sub-folders that cannot be
    listed become ``Skipped`` records; nothing here raises for one bad name."""
    from ..video import VIDEO_EXTENSIONS

    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    found: list[Path] = []
    skipped: list[Skipped] = []
    for raw in paths:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
            exists = is_dir or os.path.lexists(path)
        except OSError as e:  # a name over the OS limit, a loop of symlinks
            skipped.append(Skipped(str(path), e.strerror or str(e)))
            continue
        if not exists:
            skipped.append(Skipped(str(path), "no such file or folder"))
        elif is_dir:
            problems: list[tuple[str, str]] = []
            found += find_files(path, extensions, problems=problems)
            skipped += [Skipped(p, reason) for p, reason in problems]
        else:
            found.append(path)
    seen: set[Path] = set()
    return Inputs([p for p in found if not (p in seen or seen.add(p))], skipped)


# --- loading ------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    # our loaders' errors already name the file and the problem; others get their type for context
    return str(exc) if isinstance(exc, PEError) else f"{type(exc).__name__}: {exc}"


class _Files(Dataset):
    def __init__(self, paths: Sequence[Path], load: Callable[[Path], Any]) -> None:
        self.paths = list(paths)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                item, err = self.load(self.paths[i]), None
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # a bad file must not stop the run: report it and go on
                item, err = None, _reason(exc)
        return i, item, err, [str(w.message) for w in caught]


def _keep_list(items: list) -> list:
    return items


def _digest(x: torch.Tensor) -> bytes:
    """A content key of a loaded item (shape, dtype and values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


@torch.inference_mode()
def embed_files(
    paths: Sequence[str | os.PathLike],
    load: Callable[[Path], torch.Tensor],
    encode: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embedding",
) -> Embedded:
    """Load every file with ``load`` and encode the good ones, ``batch_size`` files at a time.

    ``load(path)`` returns one item (``(3, H, W)`` pixels for an image, ``(N, 3, H, W)`` for a video);
    ``encode(items)`` maps a list of items to ``(len(items), D)`` (``stack_images`` wraps a pixels encoder).
    Returns the embeddings (float32 on the CPU) in input order, the input indices that made it, the
    skipped files with reasons, and the distinct warnings raised while loading. A non-finite output is an
    error (``NonFiniteError``) naming the first file of its batch.
    """
    check_batch_size(batch_size)
    paths = [Path(p) for p in paths]
    loader = DataLoader(
        _Files(paths, load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep_list,
    )
    rows: dict[int, torch.Tensor] = {}  # output position -> embedding
    copies: list[tuple[int, int]] = []  # (output position, position of the identical input first seen)
    first: dict[bytes, int] = {}
    index: list[int] = []
    skipped: list[Skipped] = []
    notes: dict[str, None] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc=desc, unit="file", file=sys.stderr, leave=False)
    for items in loader:
        fresh: list[tuple[int, int, torch.Tensor]] = []
        for i, x, err, warned in items:
            notes.update(dict.fromkeys(warned))
            if err is not None:
                skipped.append(Skipped(str(paths[i]), err))
                continue
            pos = len(index)
            index.append(i)
            # Identical inputs (duplicate files) share one embedding: the floating-point result of a forward
            # pass depends slightly on the batch it is in, and exact ties keep every metric independent of
            # the batch size (ties are broken by position).
            key = _digest(x)
            if key in first:
                copies.append((pos, first[key]))
            else:
                first[key] = pos
                fresh.append((pos, i, x))
        if fresh:
            try:
                out = encode([x for *_, x in fresh])
            except NonFiniteError as e:
                raise NonFiniteError(f"{e} (first file of the batch: {paths[fresh[0][1]]})") from None
            for (pos, *_), emb in zip(fresh, out.float().cpu(), strict=True):
                rows[pos] = emb
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    for pos, src in copies:
        rows[pos] = rows[src]
    out = torch.stack([rows[p] for p in range(len(index))]) if index else torch.empty(0, 0)
    return Embedded(out, index, skipped, list(notes))


def stack_images(
    encode: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """An ``embed_files`` encoder from a pixels encoder: the ``(3, H, W)`` items are stacked into one batch."""
    return lambda items: encode(torch.stack(items))


class ImageLoader:
    """path -> ``(3, H, W)`` through an image transform (which reads the file with ``load_image``).
    Picklable, so DataLoader workers can use it."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, path: Path) -> torch.Tensor:
        return self.transform(path)
