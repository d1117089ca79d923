"""Reading image files: one loader with clear errors, and folder expansion for batch jobs.

Images are returned fully decoded and in their original mode (grey, palette, RGBA, ...): the reference
transform resizes before converting to RGB, so converting here would change its output.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError
from .input_files import MAX_IMAGE_FILE_BYTES, find_files, read_bytes

#: File name endings (lower case) treated as images when a folder is expanded.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _decode(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode encoded image bytes; every failure becomes an ImageLoadError naming ``name``.
    ``max_pixels``: refuse, from the header and before decoding, an image of more pixels (width x height)."""
    if len(data) == 0:
        raise ImageLoadError(f"cannot read image {name}: the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"cannot read image {name}: not a recognised image format ({len(data)} bytes)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"cannot read image {name}: too many pixels ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on bad headers
        raise ImageLoadError(
            f"cannot read image {name}: corrupt or truncated image header ({type(exc).__name__}: {exc})"
        ) from exc
    fmt = img.format or "image"
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageLoadError(
            f"cannot read image {name}: too many pixels ({img.width}x{img.height} = "
            f"{img.width * img.height:,}; the limit is {max_pixels:,})"
        )
    try:
        # decode now: a truncated file must fail here, not later inside a transform or a worker
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"cannot read image {name}: too many pixels ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageLoadError(
            f"cannot read image {name}: truncated or corrupt {fmt} data ({type(exc).__name__}: {exc})"
        ) from exc
    return img


def load_image(
    source: ImageSource, exif_transpose: bool = False, *, max_pixels: int | None = None
) -> Image.Image:
    """Read an image from a path, encoded bytes, or a PIL image, fully decoded, in its original mode.

    Args:
        source: a file path (``str`` or ``os.PathLike``), the bytes of an encoded image file, or a PIL image
            (returned as is after making sure its pixels are decoded).
        exif_transpose: rotate/flip according to the EXIF orientation tag. Off by default because the
            reference pipeline does not do it (and embeddings would differ for rotated photos).
        max_pixels: for paths and bytes, the most pixels (width x height) an image may have, checked from
            its header before its pixels are decoded (a decompression bomb is refused without the memory
            it would take); ``None``: only Pillow's own ``Image.MAX_IMAGE_PIXELS`` guard.

    Returns:
        A ``PIL.Image.Image`` (for multi-frame files, the first frame).

    Raises:
        ImageLoadError: the file is missing, not a regular file (a folder, a FIFO, a device: never
            opened), larger than ``input_files.MAX_IMAGE_FILE_BYTES``, empty, not an image, over
            ``max_pixels``, or truncated/corrupt; the message names the file and the reason.
        TypeError: ``source`` is none of the accepted types.
    """
    if isinstance(source, Image.Image):
        name = f"{getattr(source, 'filename', '') or '<PIL image>'}"
        try:
            source.load()
        except Exception as exc:
            raise ImageLoadError(
                f"cannot read image {name}: pixel data cannot be decoded ({type(exc).__name__}: {exc})"
            ) from exc
        img = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _decode(bytes(source), f"<{len(source)} bytes>", max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        # regular files only, read once and whole (no handle stays open, as multi-frame formats keep one)
        data = read_bytes(source, MAX_IMAGE_FILE_BYTES, "image", ImageLoadError)
        img = _decode(data, str(Path(source)), max_pixels)
    else:
        raise TypeError(f"load_image expects a path, bytes or a PIL image, got {type(source).__name__}")
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    return img


def iter_image_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = True
) -> list[Path]:
    """Expand files and folders into a deterministic list of image files.

    Args:
        paths: one path or several. Folders are expanded to the files inside whose extension is in
            :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted; hidden files and folders (names starting
            with ``.``) are skipped. Files given explicitly are kept whatever their extension, so a bad
            file is reported when it is loaded instead of being dropped silently.
        recursive: also walk sub-folders (symlinked folders are followed once; loops are cut).

    Returns:
        Paths in argument order, each folder's files sorted by their path components; duplicates removed.

    Raises:
        FileNotFoundError: a path does not exist (the message names it).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            for p in find_files(path, IMAGE_EXTENSIONS, recursive=recursive):
                add(p)
        else:
            add(path)
    return out
