"""Thumbnails of a dataset's rows for the search page, from files inside the dataset's input roots only.

A row is asked for by its number, never by a path: its ``id`` and ``source`` are read from the dataset,
the file is ``source/id`` (a folder input) or ``source`` (a file input), and its *real* path (symbolic
links resolved) must lie inside the real path of one of the inputs the manifest records (``settings
.inputs``: a folder, a file, or the fixed folder before a glob or brace pattern) and be an image file.
So neither ``..`` in an id nor a symbolic link planted in a folder reaches anything else.

Rows from WebDataset tars and tables (image bytes, URLs, paths in cells) have no thumbnail: reading them
would mean scanning a tar or a table per picture, or fetching URLs for the page; the page shows their id
and score without a picture.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from ..datasets.sources import TABLE_SUFFIXES, TAR_SUFFIX
from ..embedding.output import unescape_name
from ..errors import PEError
from ..images import is_image_file, load_image
from ..transforms import to_rgb
from .errors import APIError

_PATTERN = re.compile(r"[*?\[]|\{\d+\.\.\d+\}")


def input_roots(inputs: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """``(folders, files)``: the real paths under which rows' files may be read. A folder input is a
    folder root; a glob or brace pattern gives the folder before its first pattern component; an image
    file input is a file root. Tars and tables give none (their rows are not files)."""
    folders: list[str] = []
    files: set[str] = set()
    for raw in inputs:
        if "://" in raw or raw.lower().endswith((TAR_SUFFIX, *TABLE_SUFFIXES)):
            continue  # a URL, a tar, a table, or a pattern of them: their rows are not files
        parts = Path(raw).parts
        cut = next((i for i, part in enumerate(parts) if _PATTERN.search(part)), None)
        if cut is not None:
            folders.append(os.path.realpath(Path(*parts[:cut]) if cut else "."))
            continue
        real = os.path.realpath(raw)
        if os.path.isdir(real):
            folders.append(real)
        else:
            files.add(real)
    return tuple(folders), frozenset(files)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Thumbnails:
    """Row files -> small JPEGs (``size`` pixels on the long side), within ``inputs``' roots."""

    def __init__(self, inputs: tuple[str, ...], *, size: int = 256, max_pixels: int | None = None) -> None:
        self.folders, self.files = input_roots(inputs)
        self.size = size
        self.max_pixels = max_pixels

    @staticmethod
    def has_file(source: str) -> bool:
        """Whether a row of this ``source`` is a file (a folder's or a file input's), so it may have a
        thumbnail (the file is checked when the thumbnail is asked for)."""
        return not source.lower().endswith((TAR_SUFFIX, *TABLE_SUFFIXES)) and "://" not in source

    def locate(self, row: int, id: str, source: str) -> str:
        """The real path of row ``row``'s file; 404 when it has none or it lies outside the roots."""
        if not self.has_file(source):
            raise APIError(
                404,
                f"row {row} comes from {source}, a tar or a table: it has no thumbnail",
                code="no_thumbnail",
            )
        src = unescape_name(source)
        path = os.path.join(src, unescape_name(id)) if os.path.isdir(src) else src
        real = os.path.realpath(path)
        if not (real in self.files or any(_inside(real, f) for f in self.folders)):
            raise APIError(
                404, f"row {row}: its file is outside the dataset's input folders", code="outside_inputs"
            )
        if not is_image_file(real):
            raise APIError(404, f"row {row} is not an image file: no thumbnail", code="no_thumbnail")
        return real

    def render(self, path: str, row: int) -> bytes:
        """A JPEG of the image at ``path``, at most ``size`` pixels on each side."""
        try:
            image = to_rgb(load_image(path, max_pixels=self.max_pixels))
        except PEError as e:
            raise APIError(404, f"row {row}: {e}", code="unreadable_file") from None
        image.thumbnail((self.size, self.size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()
