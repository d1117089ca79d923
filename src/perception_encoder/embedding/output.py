"""Writing embeddings to ``.npy`` (+ a file of names) or ``.parquet``, and reading them back.

File names are stored so that every row keeps its name: a name may hold any byte but ``/`` and NUL on
Linux, including newlines and bytes that are not UTF-8. ``escape_name`` writes such names on one line of
UTF-8 text: ``\\`` becomes ``\\\\``, a newline ``\\n``, a carriage return ``\\r``, and each byte that is not
part of valid UTF-8 ``\\xNN``; every other name is written unchanged. ``unescape_name`` inverts it.
Outputs are replaced atomically (``atomic.atomic_write_all``): the ``.npy`` and its names file are both
written in full before either replaces an earlier pair.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_all, check_writable

OUTPUT_SUFFIXES = (".npy", ".parquet")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPE = re.compile(r"\\(\\|n|r|x[0-9a-fA-F]{2})")


def escape_name(path: str | os.PathLike) -> str:
    """A file name as one line of UTF-8 text (see the module docstring); inverse of ``unescape_name``."""
    text = os.fsdecode(path)  # undecodable bytes arrive as lone surrogates U+DC80-U+DCFF
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_name(text: str) -> str:
    """The file name (``str``, with lone surrogates for non-UTF-8 bytes, as ``os.fsdecode`` gives) of an
    ``escape_name`` line; ``Path(unescape_name(line))`` opens the same file."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] == "x":
            byte = int(code[1:], 16)
            return chr(0xDC00 + byte) if byte >= 0x80 else chr(byte)
        return {"\\": "\\", "n": "\n", "r": "\r"}[code]

    return _UNESCAPE.sub(one, text)


def names_path(out: str | os.PathLike) -> Path:
    """The names file beside an ``.npy`` output: ``emb.npy`` -> ``emb.paths.txt``."""
    return Path(out).with_suffix(".paths.txt")


def check_output(out: str | os.PathLike) -> Path:
    """Check, before any work, that embeddings can be written to ``out`` (``.npy`` or ``.parquet``; its
    folder is made): ``ValueError`` for another suffix, ``OutputError`` for a place that cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output file {str(out)!r} must end in .npy or .parquet")
    if out.suffix.lower() == ".parquet":
        _pyarrow()
    else:
        check_writable(names_path(out), "names file")
    return check_writable(out)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "writing .parquet needs pyarrow: pip install 'perception-encoder[parquet]'"
        ) from exc
    return pa, pq


def save_embeddings(
    embeddings: torch.Tensor, names: list[str | os.PathLike], out: str | os.PathLike
) -> list[Path]:
    """Write ``embeddings`` ``(N, D)`` with one name per row: ``.npy`` (float32) plus ``<stem>.paths.txt``
    (one ``escape_name`` line per row), or ``.parquet`` (columns ``path``, escaped the same way, and
    ``embedding``, a fixed-size list of float32). Returns the files written."""
    out = check_output(out)
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names for {len(embeddings)} embeddings")
    array = np.ascontiguousarray(embeddings.detach().cpu().numpy().astype(np.float32))
    lines = [escape_name(n) for n in names]  # before anything is written: a bad name fails here
    if out.suffix.lower() == ".npy":
        text = "".join(f"{line}\n" for line in lines)

        def write_array(tmp: str) -> None:
            with open(tmp, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
                np.save(f, array)

        return atomic_write_all(
            [(out, write_array), (names_path(out), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))]
        )
    pa, pq = _pyarrow()
    dim = array.shape[1] if array.ndim == 2 else 0
    column = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), dim)
    table = pa.table({"path": lines, "embedding": column})
    return [atomic_write(out, lambda tmp: pq.write_table(table, tmp))]


def read_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """What ``save_embeddings`` wrote: the ``(N, D)`` float32 array and the ``N`` file names (unescaped)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        lines = names_path(path).read_text(encoding="utf-8").split("\n")[:-1]
    elif path.suffix.lower() == ".parquet":
        _, pq = _pyarrow()
        table = pq.read_table(path)
        array = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32).reshape(
            table.num_rows, -1
        )
        lines = table.column("path").to_pylist()
    else:
        raise ValueError(f"{str(path)!r} must end in .npy or .parquet")
    if len(lines) != len(array):
        raise ValueError(f"{path}: {len(array)} rows but {len(lines)} names")
    return array, [unescape_name(line) for line in lines]
