"""The inputs of a dataset job (``pe embed INPUTS... --out DIR``) as one stream of ``InputItem``s.

``iter_inputs`` lists every input lazily and deterministically: memory does not grow with the number of
inputs (a folder is walked one listing at a time, a tar by its headers, a table in record batches), and
the same inputs on the same files give the same items in the same order on every run, which is what lets
a killed job resume by position. ``metadata_schema`` gives the metadata columns of the job's rows before
the first item is listed.

Each input string is, checked in this order:

- an existing folder: its images (and videos) recursively, depth-first, names sorted, hidden names skipped;
- an existing ``.tar``: WebDataset samples (members grouped by key), one item per sample;
- an existing ``.csv`` / ``.tsv`` / ``.parquet``: one item per row (a path, an http(s) URL or image bytes);
- another existing file: one item, whatever its extension (a bad file is reported when it is loaded);
- a ``{0000..0099}`` brace pattern: each name it expands to, as if named on its own;
- a glob (``*``, ``?``, ``[...]``): each match, sorted, as if named on its own (no match: a bad item);
- anything else: a bad item ("no such file, folder or table").

Problems known while listing (a folder that cannot be listed, a tar that cannot be read, an empty table
cell) become ``kind="bad"`` items in their place, so every input keeps a position and is reported once.
Only a table without an image column (or without a requested id column) stops the job: that is a mistake
in the command, raised as a ``ValueError`` before any item.
"""

from __future__ import annotations

import csv
import fnmatch
import itertools
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ..images import IMAGE_EXTENSIONS
from ..input_files import MAX_TEXT_FILE_BYTES, file_problem
from ..video import VIDEO_EXTENSIONS
from .items import InputItem, Kind
from .layout import ROW_COLUMNS

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
TAR_SUFFIX = ".tar"
_COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
#: Image members of a WebDataset sample, in order of preference (WebDataset's image extensions).
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
#: Video members, used (in this fixed order) when a sample has no image and videos are wanted.
TAR_VIDEO_EXTENSIONS = tuple(sorted(e.lstrip(".") for e in VIDEO_EXTENSIONS))
#: Text members of a sample carried as metadata columns of these names.
TAR_TEXT_COLUMNS = ("txt", "json", "cls", "caption")
#: Image column names tried in a table, in order (case-insensitive), when none is given.
IMAGE_COLUMNS = ("path", "url", "image", "image.bytes", "image_path", "file", "filename")
#: Id column names tried in a table when none is given; without one the row number is the id.
ID_COLUMNS = ("id", "key")
#: Prefix given to a metadata column whose name is one of the row's own columns (id, source, embedding).
CLASH_PREFIX = "meta_"

#: Rows converted to Python objects at a time when reading Parquet (bounds memory with image bytes).
PARQUET_BATCH_ROWS = 256
_PARQUET_BUFFER_BYTES = 1 << 20  # read column chunks through a buffer, not whole

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)
_ANY_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

MISSING = "no such file, folder or table"


# --- column types, without needing pyarrow ----------------------------------------------------------------

# A column's type is a ``pyarrow.DataType`` (from a Parquet table) or STRING: CSV columns and tar text
# members are strings, and a job over folders and tars must not need pyarrow to list its inputs.
STRING = None


def _is_null_type(t: Any) -> bool:
    return t is not STRING and str(t) == "null"


def _merge_types(a: Any, b: Any) -> Any:
    """The type of a column given type ``a`` by one input and ``b`` by another: equal types stay, an
    all-null column takes the other's type, different types become strings."""
    if _is_null_type(a):
        return b
    if _is_null_type(b):
        return a
    if a is STRING or b is STRING:
        return STRING
    return a if a == b else STRING


def _normalise_type(t: Any) -> Any:
    # pyarrow's plain string is STRING, so a Parquet string column and a CSV column agree
    return STRING if str(t) == "string" else t


def _to_string(value: Any) -> str | None:
    """A metadata value as text, for a column that inputs give different types (it becomes a string)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# --- resolving input strings into folders, tars, tables and files -----------------------------------------


@dataclass(frozen=True)
class _Target:
    """One resolved input: ``kind`` is folder, tar, table, file or bad (``problem`` says why)."""

    kind: str
    name: str
    problem: str | None = None


def _has_magic(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _classify(name: str) -> _Target | None:
    """What the existing path ``name`` is, by its type and its name; ``None`` when nothing is there."""
    try:
        st = os.stat(name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:  # a name over the OS limit, a loop of symbolic links, no permission
        return _Target("bad", name, f"cannot use {name}: {e.strerror or e}")
    except ValueError as e:  # a NUL character in the name
        return _Target("bad", name, f"cannot use {name!r}: {e}")
    if stat.S_ISDIR(st.st_mode):
        return _Target("folder", name)
    lower = name.lower()
    if lower.endswith(TAR_SUFFIX):
        return _Target("tar", name)
    if lower.endswith(_COMPRESSED_TAR_SUFFIXES):
        return _Target(
            "bad", name, f"cannot read tar {name}: compressed shards cannot be read by offset; decompress it"
        )
    if lower.endswith(TABLE_SUFFIXES):
        return _Target("table", name)
    return _Target("file", name)


def iter_braces(name: str) -> Iterator[str]:
    """The names of a brace pattern, lazily: ``shard-{0000..0002}.tar`` -> ``shard-0000.tar``,
    ``shard-0001.tar``, ``shard-0002.tar``. The width of the first bound is kept (zero padding); a
    descending range counts down; several ranges expand left to right. A name without one is itself."""
    m = _BRACE.search(name)
    if m is None:
        yield name
        return
    lo, hi = m.group(1), m.group(2)
    step = 1 if int(lo) <= int(hi) else -1
    for i in range(int(lo), int(hi) + step, step):
        yield from iter_braces(name[: m.start()] + str(i).zfill(len(lo)) + name[m.end() :])


def iter_glob(pattern: str) -> Iterator[str]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]`` in any path component; ``**`` is a plain ``*``),
    depth-first with each folder's names sorted, so matches come sorted by path components. Only one
    folder listing per pattern component is held at a time. As with ``glob``, a name starting with ``.``
    matches only a component that starts with ``.``; folders that cannot be listed match nothing."""
    if pattern.startswith("/"):
        base, rest = "/", pattern.lstrip("/")
    else:
        base, rest = "", pattern
    parts = [p for p in rest.split("/") if p]
    if parts:
        yield from _glob_walk(base, parts)


def _glob_walk(base: str, parts: list[str]) -> Iterator[str]:
    part, last = parts[0], len(parts) == 1
    if not _has_magic(part):
        path = os.path.join(base, part)
        if last:
            if os.path.lexists(path):
                yield path
        elif os.path.isdir(path):
            yield from _glob_walk(path, parts[1:])
        return
    try:
        names = sorted(os.listdir(base or "."))
    except OSError:
        return
    hidden_ok = part.startswith(".")
    for name in names:
        if (hidden_ok or not name.startswith(".")) and fnmatch.fnmatchcase(name, part):
            path = os.path.join(base, name)
            if last:
                yield path
            elif os.path.isdir(path):
                yield from _glob_walk(path, parts[1:])


def _resolve(name: str, braces: bool = True, keep: Callable[[str], bool] | None = None) -> Iterator[_Target]:
    """The targets one input string stands for (see the module docstring for the order of the checks).
    ``keep``: when given, a plain name (no pattern) it rejects is passed over without looking at the file
    system, so a pass that only wants tars and tables does not stat every match of an image glob."""
    if keep is not None and not _has_magic(name) and not (braces and _BRACE.search(name)) and not keep(name):
        return
    target = _classify(name)
    if target is not None:
        yield target
    elif braces and _BRACE.search(name):
        for expanded in iter_braces(name):
            yield from _resolve(expanded, braces=False, keep=keep)
    elif _has_magic(name):
        matched = False
        for path in iter_glob(name):
            matched = True
            if keep is None or keep(path):
                yield _classify(path) or _Target("bad", path, f"{path}: {MISSING}")  # removed since listed
        if not matched:
            yield _Target("bad", name, f"no file matches {name}")
    else:
        yield _Target("bad", name, f"{name}: {MISSING}")


def _as_list(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str | os.PathLike]:
    # one name given alone would otherwise be read as a sequence of one-letter names
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)


def _iter_targets(
    inputs: Sequence[str | os.PathLike], keep: Callable[[str], bool] | None = None
) -> Iterator[_Target]:
    for raw in inputs:
        yield from _resolve(os.fspath(raw), keep=keep)


def _may_hold_metadata(name: str) -> bool:
    """Whether a name can be a tar or a table, the only inputs with metadata columns."""
    return name.lower().endswith((TAR_SUFFIX, *TABLE_SUFFIXES))


# --- tables: their columns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableColumns:
    """What a table holds: its image column, its id column (``None``: the row number), and its metadata
    columns as ``(column in the table, column in the dataset, type)``."""

    image: str
    id: str | None
    metadata: tuple[tuple[str, str, Any], ...]


class _TableUnreadable(Exception):
    """A table whose columns cannot be read (it becomes a bad item, not a failed job)."""


def _is_parquet(name: str) -> bool:
    return name.lower().endswith(".parquet")


def _csv_delimiter(name: str) -> str:
    return "\t" if name.lower().endswith(".tsv") else ","


def _open_csv(name: str) -> IO[str]:
    # a byte-order mark is dropped; bytes that are not UTF-8 become U+FFFD rather than stop the table
    return open(name, newline="", encoding="utf-8-sig", errors="replace")  # noqa: SIM115


def _import_parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "reading .parquet tables needs pyarrow: pip install 'perception-encoder[parquet]'"
        ) from exc
    return pa, pq


def _table_header(name: str) -> list[tuple[str, Any]]:
    """The columns of table ``name`` with their types (STRING for CSV/TSV), without reading its rows.
    Raises ``_TableUnreadable`` with the reason when the table cannot be opened or has no header."""
    problem = file_problem(name)
    if problem is not None:
        raise _TableUnreadable(f"cannot read table {name}: {problem}")
    if _is_parquet(name):
        _, pq = _import_parquet()
        try:
            schema = pq.read_schema(name)
        except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError), OSError, ...
            raise _TableUnreadable(f"cannot read table {name}: {e}") from e
        return [(f.name, _normalise_type(f.type)) for f in schema]
    try:
        with _open_csv(name) as f:
            header = next(csv.reader(f, delimiter=_csv_delimiter(name)), None)
    except (OSError, csv.Error) as e:
        raise _TableUnreadable(f"cannot read table {name}: {getattr(e, 'strerror', None) or e}") from e
    if not header:
        raise _TableUnreadable(f"cannot read table {name}: it is empty (no header row)")
    return [(column, STRING) for column in header]


def _find_column(names: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    """The column named ``wanted`` (exactly, else ignoring case), or the first of ``candidates`` present
    (ignoring case); ``None`` when there is none."""
    lowered: dict[str, str] = {}
    for n in names:
        lowered.setdefault(n.lower(), n)
    if wanted is not None:
        return wanted if wanted in names else lowered.get(wanted.lower())
    return next((lowered[c] for c in candidates if c in lowered), None)


def _dataset_name(column: str, taken: set[str]) -> str:
    """The metadata column name of table column ``column``: itself, unless it is one of the row's own
    columns (``id``, ``source``, ``embedding``), which gets ``CLASH_PREFIX``."""
    name = column
    while name in ROW_COLUMNS or name in taken:
        name = CLASH_PREFIX + name
    return name


def _table_columns(name: str, image_column: str | None, id_column: str | None) -> _TableColumns:
    """The image, id and metadata columns of table ``name``. Raises ``ValueError`` naming the table and its
    columns when the image column (or a requested id column) is missing; ``_TableUnreadable`` when the
    table cannot be read."""
    header = _table_header(name)
    names = [n for n, _ in header]
    shown = ", ".join(repr(n) for n in names)
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        raise ValueError(f"table {name} has more than one column named {', '.join(map(repr, duplicates))}")
    image = _find_column(names, image_column, IMAGE_COLUMNS)
    if image is None:
        if image_column is not None:
            raise ValueError(f"table {name} has no image column {image_column!r}; its columns are {shown}")
        raise ValueError(
            f"table {name} has no image column (tried {', '.join(IMAGE_COLUMNS)}); its columns are {shown}; "
            "name it with the image column option"
        )
    ident = _find_column(names, id_column, ID_COLUMNS)
    if ident is None and id_column is not None:
        raise ValueError(f"table {name} has no id column {id_column!r}; its columns are {shown}")
    if ident == image:
        ident = None
    metadata: list[tuple[str, str, Any]] = []
    taken: set[str] = set()
    for column, kind in header:
        if column in (image, ident) or not column:  # a nameless CSV column (a trailing comma) is left out
            continue
        out = _dataset_name(column, taken)
        taken.add(out)
        metadata.append((column, out, kind))
    return _TableColumns(image, ident, tuple(metadata))


# --- the job's metadata columns ---------------------------------------------------------------------------


def _job_columns(
    inputs: Sequence[str | os.PathLike], image_column: str | None, id_column: str | None
) -> dict[str, Any]:
    """Metadata column name -> type (STRING or a pyarrow type) over every input, in first-seen order.
    Reads table headers only; raises ``ValueError`` for a table without its image (or id) column."""
    columns: dict[str, Any] = {}

    def add(column: str, kind: Any) -> None:
        columns[column] = _merge_types(columns[column], kind) if column in columns else kind

    for target in _iter_targets(inputs, keep=_may_hold_metadata):
        if target.kind == "tar":
            for column in TAR_TEXT_COLUMNS:
                add(column, STRING)
        elif target.kind == "table":
            try:
                table = _table_columns(target.name, image_column, id_column)
            except _TableUnreadable:
                continue  # listed later as a bad item
            for _, column, kind in table.metadata:
                add(column, kind)
    return columns


def metadata_schema(
    inputs: Sequence[str | os.PathLike], *, image_column: str | None = None, id_column: str | None = None
):
    """The metadata columns every row of a job over ``inputs`` has, as a ``pyarrow.Schema``, known before
    the first item: a table's columns other than its image and id columns (Parquet with their Arrow types,
    CSV/TSV as strings), and ``txt``, ``json``, ``cls``, ``caption`` (strings) when there are tars. Columns
    come in first-seen order; a column that two inputs give different types is a string; a column named
    like one of the row's own (``id``, ``source``, ``embedding``) is prefixed with ``meta_``. Folders and
    single files add nothing. Raises ``ValueError`` for a table without an image column."""
    pa, _ = _import_parquet()
    columns = _job_columns(_as_list(inputs), image_column, id_column)
    return pa.schema([pa.field(n, pa.string() if t is STRING else t) for n, t in columns.items()])


# --- making items -----------------------------------------------------------------------------------------


class _Maker:
    """Numbers items 0, 1, 2, ... in the order they are made, and lays their metadata out in the job's
    column order (``None`` for a column the input lacks; values converted where the column is a string)."""

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns
        self.names = tuple(columns)
        self.empty = tuple((n, None) for n in self.names)
        self.positions = itertools.count()

    def metadata(self, values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        if not values:
            return self.empty
        return tuple(
            (n, _to_string(values.get(n)) if self.columns[n] is STRING else values.get(n)) for n in self.names
        )

    def item(
        self,
        id: str,
        source: str,
        kind: Kind,
        *,
        metadata: dict[str, Any] | None = None,
        **fields: Any,
    ) -> InputItem:
        return InputItem(
            next(self.positions), id, source, kind, metadata=self.metadata(metadata or {}), **fields
        )

    def bad(self, id: str, source: str, problem: str, metadata: dict[str, Any] | None = None) -> InputItem:
        return self.item(id, source, "bad", problem=problem, metadata=metadata)


# --- folders ----------------------------------------------------------------------------------------------


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links: a linked folder is walked (once)
    except OSError:
        return False


def _list_folder(path: str, visited: set[tuple[int, int]]) -> list[tuple[str, bool]] | str | None:
    """The visible entries of folder ``path`` as sorted ``(name, is_folder)`` pairs; a string saying why
    when it cannot be listed; ``None`` when it was walked already (a symbolic link loop or a second link)."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in visited:
            return None
        visited.add((st.st_dev, st.st_ino))
        with os.scandir(path) as it:
            entries = [(e.name, _is_dir(e)) for e in it if not e.name.startswith(".")]
    except OSError as e:
        return f"cannot list the folder {path}: {e.strerror or e}"
    entries.sort()
    return entries


def _folder_items(folder: str, make: _Maker, extensions: frozenset[str]) -> Iterator[InputItem]:
    """The images (and videos) under ``folder``, depth-first, each folder's names sorted (so the order is
    that of their path components). Memory holds one listing per level of the current path and the ids of
    the folders walked (to cut loops), never the list of files."""
    visited: set[tuple[int, int]] = set()
    root = _list_folder(folder, visited)
    if isinstance(root, str):
        yield make.bad(".", folder, root)
        return
    # an explicit stack, not recursion: a chain of folders can be deeper than Python's recursion limit
    stack: list[tuple[str, tuple[str, ...], Iterator[tuple[str, bool]]]] = [(folder, (), iter(root or ()))]
    while stack:
        path, rel, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name, is_folder = entry
        child, child_rel = os.path.join(path, name), (*rel, name)
        if is_folder:
            listing = _list_folder(child, visited)
            if isinstance(listing, str):
                yield make.bad("/".join(child_rel), folder, listing)
            elif listing is not None:
                stack.append((child, child_rel, iter(listing)))
        elif os.path.splitext(name)[1].lower() in extensions:
            yield make.item("/".join(child_rel), folder, "file", ref=child)


# --- WebDataset tars --------------------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str] | None:
    """WebDataset's ``(key, extension)`` of a member path: the key is the path up to the first dot of the
    base name (``a.b/0001.seg.png`` -> ``a.b/0001``, ``seg.png``); ``None`` for names it skips (hidden,
    no dot, ``__meta__`` names)."""
    directory, _, base = name.rpartition("/")
    if not directory and base.startswith("__") and base.endswith("__"):
        return None
    stem, dot, ext = base.partition(".")
    if not stem or not dot:  # hidden (".x") or no extension
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _read_text_member(f: IO[bytes], info: tarfile.TarInfo, file_size: int) -> str:
    """A small text member, decoded as UTF-8 (bad bytes replaced); ``ValueError`` saying why not."""
    if info.size > MAX_TEXT_FILE_BYTES:
        raise ValueError(f"text member {info.name} is too large ({info.size:,} bytes)")
    if info.offset_data + info.size > file_size:
        raise ValueError(f"member {info.name} is cut short (the tar is truncated)")
    here = f.tell()  # tarfile reads headers from this handle: put it back where it was
    try:
        f.seek(info.offset_data)
        data = f.read(info.size)
    finally:
        f.seek(here)
    return data.decode("utf-8", errors="replace")


def _sample_item(
    tar: str,
    key: str,
    members: dict[str, tarfile.TarInfo],
    f: IO[bytes],
    file_size: int,
    make: _Maker,
    videos: bool,
) -> InputItem:
    """The item of one sample: its image member (or video member) with its text members as metadata."""
    preferred = TAR_IMAGE_EXTENSIONS + (TAR_VIDEO_EXTENSIONS if videos else ())
    media = next((members[e] for e in preferred if e in members), None)
    metadata: dict[str, Any] = {}
    try:
        for column in TAR_TEXT_COLUMNS:
            if column in members:
                metadata[column] = _read_text_member(f, members[column], file_size)
    except (ValueError, OSError) as e:
        return make.bad(key, tar, f"sample {key} of {tar}: {e}", metadata)
    if media is None:
        has = ", ".join(sorted(members))
        return make.bad(key, tar, f"sample {key} of {tar}: no image member (it has {has})", metadata)
    if media.offset_data + media.size > file_size:
        return make.bad(
            key, tar, f"member {media.name} of {tar} is cut short (the tar is truncated)", metadata
        )
    return make.item(
        key,
        tar,
        "member",
        ref=tar,
        name=media.name,
        offset=media.offset_data,
        size=media.size,
        metadata=metadata,
    )


def _damage(f: IO[bytes], offset: int, file_size: int) -> bool:
    """Whether a tar whose headers stopped at ``offset`` has more than its end-of-archive zeros there
    (tarfile stops quietly at a bad header after the first)."""
    if offset >= file_size:
        return False
    f.seek(offset)
    return f.read(tarfile.BLOCKSIZE).strip(b"\0") != b""


def _tar_items(tar: str, make: _Maker, videos: bool) -> Iterator[InputItem]:
    """One item per sample of the WebDataset shard ``tar``, reading headers only (tarfile skips member
    data by seeking) plus the small text members. Members sharing a key are consecutive in a shard, as
    WebDataset groups them; within a sample the first member of an extension is kept. A tar that cannot be
    read, or that is damaged after some samples, gives one bad item naming it (after those samples)."""
    problem = file_problem(tar)
    if problem is not None:
        yield make.bad(tar, tar, f"cannot read tar {tar}: {problem}")
        return
    try:
        f = open(tar, "rb")  # noqa: SIM115 - closed below, also when the consumer stops early
    except OSError as e:
        yield make.bad(tar, tar, f"cannot read tar {tar}: {e.strerror or e}")
        return
    with f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            tf = tarfile.open(fileobj=f, mode="r:")  # uncompressed: members are read by offset later
        except (tarfile.TarError, OSError) as e:
            yield make.bad(tar, tar, f"cannot read tar {tar}: {e}")
            return
        key: str | None = None
        members: dict[str, tarfile.TarInfo] = {}
        broken: str | None = None
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, OSError) as e:
                broken = f"cannot read tar {tar} past byte {tf.offset:,}: {e}"
                break
            if info is None:
                if _damage(f, tf.offset, file_size):
                    broken = f"cannot read tar {tar} past byte {tf.offset:,}: invalid member header"
                break
            tf.members = []  # tarfile keeps every header it reads; one sample's worth is all we need
            split = _split_member(info.name) if info.isfile() else None
            if split is None:
                continue
            member_key, ext = split
            if member_key != key:
                if key is not None:
                    yield _sample_item(tar, key, members, f, file_size, make, videos)
                key, members = member_key, {}
            members.setdefault(ext, info)
        if key is not None:
            yield _sample_item(tar, key, members, f, file_size, make, videos)
        if broken is not None:
            yield make.bad(tar, tar, broken)


# --- tables -----------------------------------------------------------------------------------------------


def _cell_source(value: Any, folder: str) -> tuple[Kind, str, bytes | None] | str:
    """An image cell -> ``(kind, ref, data)``, or a string saying why it is unusable. Strings are http(s)
    URLs or paths (relative to the table's ``folder``); bytes are an encoded image; a Hugging Face image
    struct ``{bytes, path}`` gives its bytes, or its path when the bytes are null."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if data else path
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", "", bytes(value)) if len(value) else "the image cell is empty"
    if value is None:
        return "the image cell is empty"
    if not isinstance(value, str):
        return f"the image cell holds {type(value).__name__} {value!r}, not a path, a URL or image bytes"
    text = value.strip()
    if not text:
        return "the image cell is empty"
    if _HTTP_URL.match(text):
        return "url", text, None
    scheme = _ANY_URL.match(text)
    if scheme:
        return f"cannot fetch {text}: only http and https URLs are fetched, not {scheme.group(1)}"
    return "file", os.path.join(folder, text), None


def _row_item(
    table: str, columns: _TableColumns, row: dict[str, Any], number: int, make: _Maker
) -> InputItem:
    """The item of row ``number`` (0-based) of ``table``, given as ``{column: value}``."""
    metadata = {out: row.get(column) for column, out, _ in columns.metadata}
    if columns.id is None:
        ident = str(number)
    else:
        value = row.get(columns.id)
        ident = _to_string(value) or ""
        if not ident:
            return make.bad(str(number), table, f"row {number} of {table}: the id cell is empty", metadata)
    cell = _cell_source(row.get(columns.image), os.path.dirname(table))
    if isinstance(cell, str):
        return make.bad(ident, table, f"row {number} of {table}: {cell}", metadata)
    kind, ref, data = cell
    return make.item(ident, table, kind, ref=ref, data=data, metadata=metadata)


def _csv_rows(table: str, make: _Maker) -> Iterator[dict[str, Any] | InputItem]:
    """The data rows of a CSV/TSV table as ``{column: str}`` (a short row lacks its last columns), or a
    bad item for a line the csv module cannot parse; blank lines are not rows."""
    with _open_csv(table) as f:
        reader = csv.reader(f, delimiter=_csv_delimiter(table))
        header = next(reader, None) or []
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a field over the size limit, a NUL byte: report the row, go on
                yield make.bad(str(number), table, f"row {number} of {table} (line {reader.line_num}): {e}")
                number += 1
                continue
            if not cells:
                continue
            yield dict(zip(header, cells, strict=False))  # a short row lacks its last columns
            number += 1


def _parquet_rows(table: str, make: _Maker) -> Iterator[dict[str, Any] | InputItem]:
    """The rows of a Parquet table as dicts, converted ``PARQUET_BATCH_ROWS`` at a time (Arrow holds about
    one row group decoded); a table that fails part way gives a bad item saying from which row on it
    could not be read."""
    pa, pq = _import_parquet()
    number = 0
    try:
        with pa.OSFile(table, "rb") as f:
            # no pre-buffering: that fetches whole row groups' column chunks ahead of the rows read
            reader = pq.ParquetFile(f, buffer_size=_PARQUET_BUFFER_BYTES, pre_buffer=False)
            for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False):
                for row in batch.to_pylist():
                    yield row
                    number += 1
    except Exception as e:  # pyarrow raises ArrowInvalid (a ValueError), OSError, ...
        yield make.bad(str(number), table, f"cannot read table {table} from row {number} on: {e}")


def _table_items(
    table: str, make: _Maker, image_column: str | None, id_column: str | None
) -> Iterator[InputItem]:
    """One item per row of ``table``, streamed (CSV line by line, Parquet in record batches)."""
    try:
        columns = _table_columns(table, image_column, id_column)
    except (_TableUnreadable, ValueError) as e:  # ValueError: the table changed since its header was read
        yield make.bad(table, table, str(e))
        return
    rows = _parquet_rows(table, make) if _is_parquet(table) else _csv_rows(table, make)
    number = 0
    for row in rows:
        if isinstance(row, InputItem):
            yield row
        else:
            yield _row_item(table, columns, row, number, make)
        number += 1


# --- every input ------------------------------------------------------------------------------------------


def iter_inputs(
    inputs: Sequence[str | os.PathLike],
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    videos: bool = True,
) -> Iterator[InputItem]:
    """Every input of a job, as ``InputItem``s at positions 0, 1, 2, ... in the order of ``inputs``.

    Streaming and deterministic (see the module docstring). Per input:

    - folder: its images (and videos when ``videos``), ``id`` the path relative to it (``/``-separated),
      ``source`` the folder as given; a sub-folder that cannot be listed is one bad item;
    - file: one ``kind="file"`` item, ``id`` = ``source`` = the name as given;
    - glob / brace pattern: each match or expansion as if named on its own; a glob without a match is
      one bad item;
    - tar: one ``kind="member"`` item per sample with an image (or, when ``videos``, a video) member,
      ``id`` the sample key, metadata ``txt``/``json``/``cls``/``caption``;
    - table: one item per row (``kind`` url, file or bytes), ``id`` from ``id_column`` (or a column named
      ``id``/``key``, else the row number), the other columns as metadata.

    ``image_column`` / ``id_column`` name those columns in every table. Every item's ``metadata`` has the
    columns of ``metadata_schema(inputs, ...)`` in its order. Raises ``ValueError`` (now, before any item
    is listed) when a table lacks its image column or the requested id column.
    """
    inputs = _as_list(inputs)
    columns = _job_columns(inputs, image_column, id_column)
    return _iter_items(inputs, _Maker(columns), image_column, id_column, videos)


def _iter_items(
    inputs: Sequence[str | os.PathLike],
    make: _Maker,
    image_column: str | None,
    id_column: str | None,
    videos: bool,
) -> Iterator[InputItem]:
    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    for target in _iter_targets(inputs):
        if target.kind == "folder":
            yield from _folder_items(target.name, make, extensions)
        elif target.kind == "tar":
            yield from _tar_items(target.name, make, videos)
        elif target.kind == "table":
            yield from _table_items(target.name, make, image_column, id_column)
        elif target.kind == "file":
            yield make.item(target.name, target.name, "file", ref=target.name)
        else:
            yield make.bad(target.name, target.name, target.problem or MISSING)
