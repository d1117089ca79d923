"""Reading input files defensively: regular files only, with a size limit; JSON with a nesting limit;
folders walked without stopping at an unreadable sub-folder.

A name on the command line can point anywhere: a FIFO (reading blocks forever), ``/dev/zero`` (reading
never ends), a folder, a file larger than memory. Every file the library reads whole goes through
``read_bytes`` / ``read_text`` here, which look at the file's type and size first (``os.stat``, which never
blocks) and read at most ``limit`` bytes.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Largest image file read whole (bytes); an image this large already has more pixels than Pillow accepts.
MAX_IMAGE_FILE_BYTES = 1 << 30
#: Largest config / template / class-name text file read (bytes).
MAX_TEXT_FILE_BYTES = 16 << 20

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_problem(path: str | os.PathLike, limit: int | None = None) -> str | None:
    """Why ``path`` cannot be read as a regular file (``None`` when it can): missing, not a regular file
    (folder, FIFO, device, socket), unreadable, or larger than ``limit`` bytes. Never opens the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror or str(e)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        return f"it is {kind}, not a regular file"
    if limit is not None and st.st_size > limit:
        return f"it is too large ({st.st_size:,} bytes; the limit is {limit:,})"
    return None


def media_file(path: str | os.PathLike, what: str, error: type = ValueError) -> Path:
    """``path`` as a ``Path`` once it is a non-empty regular file a decoder may open (a FIFO or a device
    would block the decoder or never end); else ``error`` naming it and ``what`` it should hold."""
    p = Path(path)
    problem = file_problem(p)
    if problem == "no such file":
        raise error(f"{what} file not found: {str(p)!r}")
    if problem is not None:
        raise error(f"cannot read {what} {str(p)!r}: {problem}")
    if p.stat().st_size == 0:
        raise error(f"{what} file {str(p)!r} is empty (0 bytes)")
    return p


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file", error: type = ValueError) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` bytes; else ``error`` naming it."""
    problem = file_problem(path, limit)
    if problem is not None:
        raise error(f"cannot read {what} {Path(path)}: {problem}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # a file that grew since the stat is still cut off
    except OSError as e:
        raise error(f"cannot read {what} {Path(path)}: {e.strerror or e}") from e
    if len(data) > limit:
        raise error(f"cannot read {what} {Path(path)}: it is too large (over {limit:,} bytes)")
    return data


def read_text(
    path: str | os.PathLike, what: str = "file", limit: int = MAX_TEXT_FILE_BYTES, error: type = ValueError
) -> str:
    """A UTF-8 text file (a byte-order mark is dropped), read as ``read_bytes`` does."""
    data = read_bytes(path, limit, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {Path(path)} is not UTF-8 text ({e})") from e


def parse_json(text: str | bytes, what: str, error: type = ValueError) -> Any:
    """``json.loads`` whose failures, including nesting too deep to parse, become ``error`` naming ``what``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{what}: the JSON is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what}: not valid JSON ({e})") from e


def find_files(
    root: str | os.PathLike,
    extensions: Iterable[str],
    *,
    recursive: bool = True,
    problems: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Files under folder ``root`` whose extension (lower case, with the dot) is in ``extensions``.

    Hidden files and folders (names starting with ``.``) are skipped; symlinked folders are followed once
    (loops are cut). Sorted by path components, so the order is the same on every machine. A sub-folder
    that cannot be listed (no permission, a path over the OS limit) is appended to ``problems`` as
    ``(path, reason)`` when a list is given, and left out either way: the walk never stops on one.
    """
    wanted = {e.lower() for e in extensions}
    found: list[Path] = []
    visited: set[str] = set()

    def unreadable(e: OSError) -> None:
        if problems is not None:
            problems.append((str(e.filename or root), f"cannot list the folder: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop or a folder reached twice
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.parts)
