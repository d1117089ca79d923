"""Files in, embeddings out: finding the inputs, loading each file, and the batching loop.

Every file is loaded on its own (optionally in DataLoader workers, so decoding overlaps encoding); a file
that fails to load becomes a :class:`Skipped` record with its reason, and the rest of its batch goes on.
A name given on the command line that does not exist, and a sub-folder that cannot be listed, are
skipped and reported the same way. Warnings raised while loading (a 16-bit image converted as the
reference does) are collected and reported once per run, not once per file.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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


def expand_inputs(paths: Sequence[str | os.PathLike], *, videos: bool = True, audio: bool = False) -> Inputs:
    """Files and folders -> the files to embed: every file named (whatever its extension: a bad one is
    reported when it is loaded), and the images (and videos, when ``videos``; audio files, when ``audio``)
    found in each folder, recursively (``input_files.find_files``). Names that do not exist and
    sub-folders that cannot be listed become ``Skipped`` records; nothing here raises for one bad name."""
    from ..video import VIDEO_EXTENSIONS

    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    if audio:
        from ..av.audio import AUDIO_EXTENSIONS

        extensions = extensions | AUDIO_EXTENSIONS
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


def _load_one(load: Callable[[Any], Any], item: Any) -> tuple[Any, str | None, list[str]]:
    """``(loaded, None, warnings)`` or ``(None, reason, warnings)``: a bad input never raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, err = load(item), None
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a bad file must not stop the run: report it and go on
            value, err = None, _reason(exc)
    return value, err, [str(w.message) for w in caught]


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 0, window: int = 64
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` for every item, in order. With ``workers`` processes, up to ``window`` items are
    in flight at once, so decoding runs ahead of the caller while memory stays bounded whatever the
    number of items (the items are read lazily, never listed in full). ``fn`` must be picklable."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    import torch.multiprocessing as mp

    context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_loader_process) as pool:
        pending: deque[tuple[Any, Any]] = deque()
        stream = iter(items)
        for item in itertools.islice(stream, max(1, window)):
            pending.append((item, pool.submit(fn, item)))
        while pending:
            item, future = pending.popleft()
            nxt = next(stream, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, future.result()


_END = object()


def _loader_process() -> None:
    """Set up a loader process: one torch thread (a process forked while the parent's thread pool was busy
    would otherwise wait forever on that pool in its first parallel op; DataLoader's workers do the same),
    and a lower priority than the model's process (``LOADER_NICENESS``): on a CPU that the model keeps busy,
    decoding fills the gaps instead of stalling the model's threads, which wait for each other."""
    torch.set_num_threads(1)
    yield_to_model()


def yield_to_model(*, thread_only: bool = False) -> None:
    """Lower the calling thread's scheduling priority by ``LOADER_NICENESS``: decoding (a loader process, a
    server's decode thread) then runs in the gaps the model leaves. On Linux a nice value belongs to one
    thread; elsewhere it is the whole process's, so ``thread_only`` callers (threads beside the model in one
    process) change nothing there."""
    if not LOADER_NICENESS or not hasattr(os, "nice"):
        return
    if thread_only and not sys.platform.startswith("linux"):
        return
    try:
        os.nice(LOADER_NICENESS)
    except OSError:  # not permitted here: decoding keeps the model's priority
        pass


#: How much lower the scheduling priority of loader processes is than the main process's (``os.nice``).
LOADER_NICENESS = int(os.environ.get("PE_LOADER_NICENESS", "10"))


@dataclass
class Result:
    """One input's outcome: its embedding ``(D,)``, or the reason it was skipped."""

    item: Any
    embedding: torch.Tensor | None = None
    reason: str | None = None


@torch.inference_mode()
def iter_embedded(
    items: Iterable[Any],
    load: Callable[[Any], torch.Tensor],
    encode: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    share_duplicates: bool = False,
    notes: dict[str, None] | None = None,
    name: Callable[[Any], str] = str,
) -> Iterator[Result]:
    """Every item's ``Result``, in order, streaming: items are loaded lazily (in ``num_workers`` processes
    when asked), and every ``batch_size`` consecutive items the good ones are encoded together (so the
    batches, hence the floating-point results, do not depend on the workers).

    ``share_duplicates``: identical loaded inputs share the first one's embedding, which makes results
    independent of the batch size too (evaluation needs that; it costs a digest per distinct input).
    ``notes`` collects the distinct warnings raised while loading. A non-finite output raises
    ``NonFiniteError`` naming (``name(item)``) the first item of its batch.
    """
    check_batch_size(batch_size)
    first: dict[bytes, torch.Tensor] = {}
    window = max(2 * batch_size, 4 * num_workers)
    call = functools.partial(_load_one, load)
    loaded = ordered_map(call, items, num_workers, window)
    while True:
        chunk = list(itertools.islice(loaded, batch_size))
        if not chunk:
            return
        batch = []
        for item, (x, err, warned) in chunk:
            if notes is not None:
                notes.update(dict.fromkeys(warned))
            batch.append((item, x, err))
        yield from _encode_batch(batch, encode, first if share_duplicates else None, name)


def _encode_batch(
    batch: list[tuple[Any, Any, str | None]],
    encode: Callable[[list[torch.Tensor]], torch.Tensor],
    first: dict[bytes, torch.Tensor] | None,
    name: Callable[[Any], str],
) -> Iterator[Result]:
    keys = [_digest(x) if first is not None and err is None else None for _, x, err in batch]
    fresh = [
        i for i, (_, x, err) in enumerate(batch) if err is None and (first is None or keys[i] not in first)
    ]
    # an input repeated inside this batch is encoded once too
    if first is not None:
        seen: set[bytes] = set()
        fresh = [i for i in fresh if not (keys[i] in seen or seen.add(keys[i]))]
    values: dict[int, torch.Tensor] = {}
    if fresh:
        try:
            out = encode([batch[i][1] for i in fresh])
        except NonFiniteError as e:
            raise NonFiniteError(f"{e} (first file of the batch: {name(batch[fresh[0]][0])})") from None
        for i, emb in zip(fresh, out.float().cpu(), strict=True):
            values[i] = emb
            if first is not None:
                first[keys[i]] = emb
    for i, (item, _, err) in enumerate(batch):
        if err is not None:
            yield Result(item, reason=err)
        else:
            yield Result(item, embedding=values[i] if i in values else first[keys[i]])


def _digest(x: torch.Tensor) -> bytes:
    """A content key of a loaded item (shape, dtype and values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def embed_files(
    paths: Sequence[str | os.PathLike],
    load: Callable[[Path], torch.Tensor],
    encode: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embedding",
    share_duplicates: bool = True,
) -> Embedded:
    """Load every file with ``load`` and encode the good ones, ``batch_size`` files at a time
    (``iter_embedded``, identical files sharing one embedding so results do not depend on the batch size;
    ``share_duplicates=False`` for items that are not single tensors, such as PE-AV's sound and frames).

    ``load(path)`` returns one item (``(3, H, W)`` pixels for an image, ``(N, 3, H, W)`` for a video);
    ``encode(items)`` maps a list of items to ``(len(items), D)`` (``stack_images`` wraps a pixels encoder).
    Returns the embeddings (float32 on the CPU) in input order, the input indices that made it, the
    skipped files with reasons, and the distinct warnings raised while loading. A non-finite output is an
    error (``NonFiniteError``) naming the first file of its batch.
    """
    paths = [Path(p) for p in paths]
    values: list[torch.Tensor] = []
    index: list[int] = []
    skipped: list[Skipped] = []
    notes: dict[str, None] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc=desc, unit="file", file=sys.stderr, leave=False)
    results = iter_embedded(
        enumerate(paths),
        _Indexed(load),
        encode,
        batch_size=batch_size,
        num_workers=num_workers,
        share_duplicates=share_duplicates,
        notes=notes,
        name=lambda item: str(item[1]),
    )
    for result in results:
        i, path = result.item
        if result.reason is not None:
            skipped.append(Skipped(str(path), result.reason))
        else:
            index.append(i)
            values.append(result.embedding)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out = torch.stack(values) if values else torch.empty(0, 0)
    return Embedded(out, index, skipped, list(notes))


class _Indexed:
    """``load`` applied to the path of an ``(index, path)`` pair (picklable for loader processes)."""

    def __init__(self, load: Callable[[Path], torch.Tensor]) -> None:
        self.load = load

    def __call__(self, item: tuple[int, Path]) -> torch.Tensor:
        return self.load(item[1])


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
