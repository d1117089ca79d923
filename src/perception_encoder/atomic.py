"""Writing outputs so that a reader never sees half a file and a good earlier output is never lost.

- ``check_writable(path)``: before a long job, check that ``path`` can be written (its folder exists or can
  be made, is a folder, is writable, the name is not too long), so a problem shows up front, not after the
  work;
- ``atomic_write(path, write)``: write through a temporary file in the same folder, then rename it over
  ``path``. An interrupted or failed write (a full disk, a kill) leaves the previous file intact and no
  temporary file behind (except after SIGKILL: temporary names start with ``.`` and end in ``.tmp``);
- ``atomic_write_all``: several files that belong together (an ``.npy`` and its names): every one is
  written completely first, and only then are they renamed, one right after the other.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import OutputError

Writer = Callable[[str], None]  # writes the content to the temporary path it is given
TEMP_SUFFIX = ".tmp"


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _explain(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no space left (disk full, quota or file size limit)"
    return exc.strerror or str(exc)


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a ``Path`` after checking that a file can be written there; missing folders are made.

    Raises ``OutputError`` naming the path when it is a folder, a parent is a file, the folder cannot be
    made or written to (read-only, no permission), or the name is longer than the file system allows.
    """
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise OutputError(f"{what} {str(p)!r} is not a file name")
    for parent in reversed([p.parent, *p.parent.parents]):
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise OutputError(f"cannot write {what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot make the folder of {what} {str(p)!r}: {_explain(e)}") from e
    size = len(os.fsencode(p.name))
    if size > _name_max(p.parent):
        raise OutputError(f"cannot write {what}: the file name is too long ({size} bytes)")
    if os.path.isdir(p):  # after the length check: a stat of a name that long fails
        raise OutputError(f"{what} {str(p)!r} is a folder; give a file name")
    try:
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=".pe-write-check.", suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {what} {str(p)!r}: {_explain(e)}") from e
    return p


def _temp_beside(path: Path) -> str:
    """A new empty temporary file in ``path``'s folder, named after ``path`` (cut to fit NAME_MAX)."""
    room = _name_max(path.parent) - len(".") - len(".XXXXXXXX") - len(TEMP_SUFFIX) - 1
    stem = os.fsencode(path.name)[: max(1, room)].decode(errors="ignore") or "out"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return tmp


def _finish(tmp: str) -> None:
    """Flush to disk and give the usual permissions (``mkstemp`` makes owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, Writer]]) -> list[Path]:
    """Write each ``(path, write)``: ``write(tmp)`` writes the content to a temporary file beside ``path``.

    Every file is written in full before any is renamed into place, so a failure (full disk, an error in
    ``write``) changes none of the targets and leaves no temporary file. Raises ``OutputError`` for
    failures of the file system (naming the path), and re-raises other errors of ``write``.
    """
    paths = [Path(p) for p, _ in items]
    temps: list[str] = []
    try:
        for path, (_, write) in zip(paths, items, strict=True):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temps.append(_temp_beside(path))
                write(temps[-1])
                _finish(temps[-1])
            except OSError as e:
                raise OutputError(f"cannot write {str(path)!r}: {_explain(e)}") from e
        for path, tmp in zip(paths, temps, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths


def atomic_write(path: str | os.PathLike, write: Writer) -> Path:
    """Write one file through a temporary file in its folder (see ``atomic_write_all``)."""
    return atomic_write_all([(path, write)])[0]


def remove_stale_temps(folder: str | os.PathLike, names: str) -> int:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when a process was killed while
    writing (``.<name>.<8 random characters>.tmp``), for target names matching the regex ``names`` only.
    Returns how many were removed (0 when there is no such folder)."""
    import re

    pattern = re.compile(rf"\.(?:{names})\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        if pattern.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
