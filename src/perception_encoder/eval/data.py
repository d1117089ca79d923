"""Evaluation datasets described by files: class folders, CSV tables, class-name and template lists.

Formats
-------
* **Class folder** (classification): ``ROOT/<class>/**/<file>``. Classes are the sub-folders of ``ROOT``
  in sorted order (ImageNet's ``n01440764 ...`` folders sort into the standard class order). A class name is
  the folder name with ``_`` turned into a space, unless a class-names file is given.
* **Split folder** (linear probe, k-NN): ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...``; the
  classes are the union of both splits' folders, sorted.
* **Labelled CSV** (classification): a header row naming a file column (``path``, ``image``, ``file``,
  ``filename``, ``filepath``, ``image_path``, ``video``, ``video_path``) and a label column (``label``,
  ``class``, ``classname``, ``class_name``, ``category``, ``target``). A two-column file whose first row
  names neither is read without a header. Relative paths are relative to the CSV's folder. Labels are
  class names; with a class-names file, integer labels index into it.
* **Captions CSV** (retrieval): a file column and a caption column (``caption``, ``captions``, ``text``,
  ``title``). Several captions per file: repeat the file on several rows, and/or split one cell with a
  separator (``caption_sep``). Files are numbered in order of first appearance.
* **Class-names file**: one name per line (blank lines ignored), or ``folder<TAB>name`` lines mapping
  folders to names. A plain list that contains every folder's name (``_`` as space) is matched by name,
  and its other names become distractor classes (zero-shot chooses among all of them); otherwise it must
  have one name per class folder, in sorted folder order (ImageNet's synset folders). CSV labels are
  names from the list or integer indices into it; rows with an empty label are left out (noted).
* **Templates file**: one prompt template per line, each with exactly one ``{}`` for the class name.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..images import IMAGE_EXTENSIONS
from ..input_files import file_problem, read_text
from ..video import VIDEO_EXTENSIONS
from ..zeroshot import check_template

_FILE_COLUMNS = ("path", "image", "file", "filename", "filepath", "image_path", "video", "video_path")
_LABEL_COLUMNS = ("label", "class", "classname", "class_name", "category", "target")
_CAPTION_COLUMNS = ("caption", "captions", "text", "title")


@dataclass
class LabeledFiles:
    """Files with class labels: ``paths[i]`` belongs to class ``labels[i]`` (an index into ``classnames``)."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        bad = [y for y in self.labels if not 0 <= y < len(self.classnames)]
        if bad:
            raise ValueError(f"labels {bad[:5]} are outside the {len(self.classnames)} classes")

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class CaptionedFiles:
    """Files and captions for retrieval: caption ``j`` describes file ``owners[j]`` (an index into paths)."""

    paths: list[Path]
    captions: list[str]
    owners: list[int]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.owners):
            raise ValueError(f"{len(self.captions)} captions but {len(self.owners)} owners")
        if any(not 0 <= o < len(self.paths) for o in self.owners):
            raise ValueError("a caption owner is outside the list of files")


# --- bundled lists ----------------------------------------------------------------------------------------


def _asset_lines(name: str) -> list[str]:
    text = resources.files("perception_encoder").joinpath("assets", "imagenet", name).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names of the CLIP paper's notebook, in class-index order."""
    return _asset_lines("classnames.txt")


def imagenet_templates() -> list[str]:
    """The 80 ImageNet prompt templates of the CLIP paper's notebook (format strings with one ``{}``)."""
    return _asset_lines("templates.txt")


# --- text files -------------------------------------------------------------------------------------------


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    path = Path(path)
    if file_problem(path) == "no such file":
        raise FileNotFoundError(f"{what} file {path} does not exist")
    text = read_text(path, f"{what} file")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{what} file {path} is empty")
    return lines


def read_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates from a text file, one per line, each with exactly one ``{}``."""
    templates = _read_lines(path, "templates")
    for n, t in enumerate(templates, 1):
        try:
            check_template(t)
        except ValueError as e:
            raise ValueError(f"templates file {path}, line {n}: {e}") from None
    return templates


def read_classnames(path: str | os.PathLike) -> list[str] | dict[str, str]:
    """Class names from a text file: a list (one name per line), or a dict for ``folder<TAB>name`` lines."""
    lines = _read_lines(path, "class-names")
    tabbed = ["\t" in line for line in lines]
    if not any(tabbed):
        return lines
    if not all(tabbed):
        n = tabbed.index(False) + 1
        raise ValueError(
            f"class-names file {path}, line {n}: mixes 'folder<TAB>name' lines with plain names; use one form"
        )
    mapping: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        folder, name = (s.strip() for s in line.split("\t", 1))
        if not folder or not name:
            raise ValueError(f"class-names file {path}, line {n}: expected 'folder<TAB>name', got {line!r}")
        if folder in mapping:
            raise ValueError(f"class-names file {path}, line {n}: folder {folder!r} is listed twice")
        mapping[folder] = name
    return mapping


def _name_folders(
    folders: Sequence[str], classnames: Sequence[str] | dict[str, str] | None
) -> tuple[list[str], list[int]]:
    """The class list and each sorted folder's class index (see the module doc)."""
    derived = [f.replace("_", " ") for f in folders]
    if classnames is None:
        return derived, list(range(len(folders)))
    if isinstance(classnames, dict):
        missing = [f for f in folders if f not in classnames]
        if missing:
            raise ValueError(f"the class-names mapping has no name for the class folders {missing[:5]}")
        return [classnames[f] for f in folders], list(range(len(folders)))
    names = list(classnames)
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        first.setdefault(name, i)
    if all(d in first for d in derived):
        # every folder is named in the list: match by name; the other names are distractor classes
        return names, [first[d] for d in derived]
    if len(names) != len(folders):
        raise ValueError(
            f"{len(names)} class names were given for {len(folders)} class folders; give one name per "
            "class folder in sorted folder order, or a list that contains every folder's name "
            f"(missing e.g. {[d for d in derived if d not in first][:3]})"
        )
    return names, list(range(len(folders)))


# --- class folders ----------------------------------------------------------------------------------------


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_under(folder: Path, extensions: frozenset[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.parts)


def _check_dir(root: str | os.PathLike, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{what} {root} is not a folder")
    return root


def class_folder(
    root: str | os.PathLike,
    classnames: Sequence[str] | dict[str, str] | None = None,
    *,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    folders: Sequence[str] | None = None,
) -> LabeledFiles:
    """Files in a class-per-folder tree (see the module doc); ``folders`` fixes the class folder list."""
    root = _check_dir(root, "dataset folder")
    folders = list(folders) if folders is not None else _class_folders(root)
    if not folders:
        raise ValueError(f"dataset folder {root} has no class sub-folders (expected {root}/<class>/<files>)")
    names, folder_labels = _name_folders(folders, classnames)
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in zip(folder_labels, folders, strict=True):
        sub = root / folder
        files = _files_under(sub, extensions) if sub.is_dir() else []
        paths += files
        labels += [label] * len(files)
    if not paths:
        kinds = ", ".join(sorted(extensions))
        raise ValueError(f"dataset folder {root} has no files ending in {kinds} under its class folders")
    return LabeledFiles(paths, labels, names, source=str(root))


def split_folders(
    root: str | os.PathLike,
    classnames: Sequence[str] | dict[str, str] | None = None,
    *,
    splits: tuple[str, str] = ("train", "test"),
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> tuple[LabeledFiles, LabeledFiles]:
    """The ``train/`` and ``test/`` class folders of ``root``, labelled with one shared class list."""
    root = _check_dir(root, "dataset folder")
    subs = [root / s for s in splits]
    for s in subs:
        if not s.is_dir():
            raise FileNotFoundError(
                f"dataset folder {root} has no {s.name}/ split (expected {root}/{splits[0]}/<class>/... and "
                f"{root}/{splits[1]}/<class>/...)"
            )
    folders = sorted(set(_class_folders(subs[0])) | set(_class_folders(subs[1])))
    return tuple(class_folder(s, classnames, extensions=extensions, folders=folders) for s in subs)  # type: ignore[return-value]


# --- CSV --------------------------------------------------------------------------------------------------


def _read_csv(path: str | os.PathLike) -> list[list[str]]:
    path = Path(path)
    problem = file_problem(path)
    if problem == "no such file":
        raise FileNotFoundError(f"CSV file {path} does not exist")
    if problem is not None:
        raise ValueError(f"cannot read CSV file {path}: {problem}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"CSV file {path} is empty")
    return rows


def _find_column(header: list[str], names: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _columns(path, rows: list[list[str]], second: Sequence[str], what: str) -> tuple[int, int, int]:
    """(file column, ``what`` column, first data row) of a CSV."""
    header = rows[0]
    fcol, scol = _find_column(header, _FILE_COLUMNS), _find_column(header, second)
    if fcol is not None and scol is not None:
        return fcol, scol, 1
    if fcol is None and scol is None and len(header) == 2:
        return 0, 1, 0  # no header: file, then the second column
    raise ValueError(
        f"CSV file {path}: cannot find the file and {what} columns in the header {header}; name them e.g. "
        f"'{_FILE_COLUMNS[0]}' and '{second[0]}' (or give a two-column file without a header)"
    )


def _resolve(base: Path, cell: str) -> Path:
    p = Path(cell.strip()).expanduser()
    return p if p.is_absolute() else base / p


def labeled_csv(
    path: str | os.PathLike, classnames: Sequence[str] | dict[str, str] | None = None
) -> LabeledFiles:
    """Files and labels from a CSV (see the module doc).

    Without ``classnames`` the classes are the distinct labels, sorted. With a list, labels are class names
    from the list or integer indices into it. A ``folder<TAB>name`` mapping renames labels.
    """
    rows = _read_csv(path)
    fcol, lcol, start = _columns(path, rows, _LABEL_COLUMNS, "label")
    base = Path(path).parent
    files: list[Path] = []
    raw: list[str] = []
    unlabeled = 0
    for n, row in enumerate(rows[start:], start + 1):
        if len(row) <= max(fcol, lcol) or not row[fcol].strip():
            raise ValueError(f"CSV file {path}, row {n}: expected a file and a label, got {row}")
        if not row[lcol].strip():
            unlabeled += 1  # e.g. caption tables where only some rows carry a class
            continue
        files.append(_resolve(base, row[fcol]))
        raw.append(row[lcol].strip())
    if not files:
        raise ValueError(f"CSV file {path} has no labelled rows")
    notes = [f"{unlabeled} rows without a label were left out"] if unlabeled else []
    if isinstance(classnames, dict):
        unknown = sorted({r for r in raw if r not in classnames})
        if unknown:
            raise ValueError(f"CSV file {path}: labels {unknown[:5]} are not in the class-names mapping")
        keys = sorted(set(raw))
        names = [classnames[k] for k in keys]
        index = {k: i for i, k in enumerate(keys)}
        labels = [index[r] for r in raw]
    elif classnames is not None:
        names = list(classnames)
        by_name: dict[str, int] = {}
        for i, c in enumerate(names):
            by_name.setdefault(c, i)  # a duplicated name (ImageNet has two) maps to its first index
        labels = []
        for n, r in enumerate(raw, start + 1):
            if r in by_name:
                labels.append(by_name[r])
            elif r.lstrip("-").isdigit() and 0 <= int(r) < len(names):
                labels.append(int(r))
            else:
                raise ValueError(
                    f"CSV file {path}, row {n}: label {r!r} is neither one of the {len(names)} class names "
                    f"nor an index in [0, {len(names)})"
                )
    else:
        names = sorted(set(raw))
        index = {k: i for i, k in enumerate(names)}
        labels = [index[r] for r in raw]
    return LabeledFiles(files, labels, names, source=str(path), notes=notes)


def captions_csv(path: str | os.PathLike, caption_sep: str | None = None) -> CaptionedFiles:
    """Files and their captions from a CSV (see the module doc). Empty captions and exact duplicates of a
    file's caption are dropped."""
    rows = _read_csv(path)
    fcol, ccol, start = _columns(path, rows, _CAPTION_COLUMNS, "caption")
    base = Path(path).parent
    paths: list[Path] = []
    index: dict[Path, int] = {}
    captions: list[str] = []
    owners: list[int] = []
    seen: set[tuple[int, str]] = set()
    for n, row in enumerate(rows[start:], start + 1):
        if len(row) <= max(fcol, ccol) or not row[fcol].strip():
            raise ValueError(f"CSV file {path}, row {n}: expected a file and a caption, got {row}")
        file = _resolve(base, row[fcol])
        key = Path(os.path.normpath(file))
        if key not in index:
            index[key] = len(paths)
            paths.append(file)
        owner = index[key]
        parts = row[ccol].split(caption_sep) if caption_sep else [row[ccol]]
        for text in (p.strip() for p in parts):
            if text and (owner, text) not in seen:
                seen.add((owner, text))
                captions.append(text)
                owners.append(owner)
    if not captions:
        raise ValueError(f"CSV file {path} has no captions")
    without = sorted(set(range(len(paths))) - set(owners))
    notes = [f"{len(without)} files have no caption and are only candidates"] if without else []
    return CaptionedFiles(paths, captions, owners, source=str(path), notes=notes)


def labeled_files(
    data: str | os.PathLike,
    classnames: Sequence[str] | dict[str, str] | None = None,
    *,
    videos: bool = False,
) -> LabeledFiles:
    """A class folder or a labelled CSV (a file ending in ``.csv``), whichever ``data`` is.

    ``videos=True`` scans class folders for video files instead of images."""
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        return labeled_csv(path, classnames)
    if path.is_file():
        raise ValueError(
            f"dataset {path} is a file but not a .csv; give a class folder or a CSV of path,label"
        )
    return class_folder(path, classnames, extensions=VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS)
