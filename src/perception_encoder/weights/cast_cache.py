"""A checkpoint cast once to another dtype and kept on disk, so ``pe.load(name, dtype=torch.bfloat16)`` is as
fast and as light as loading a bfloat16 file.

Why: weights cast while loading live in anonymous memory. Packing them for oneDNN (``layers.linear``) would
keep a second copy, so they stay unpacked and the model runs slower than from a bfloat16 file, whose
memory-mapped weights are packed and their file pages given back. Here the cast is written once as a
bfloat16 safetensors file (native layout) and loaded like any other file: memory-mapped, packed, one copy.

- The file is written tensor by tensor (each float32 tensor's file pages are released once it is cast), so
  writing it never holds more than one tensor beside what was already mapped.
- Its name is keyed by the source file (resolved path, size, modification time, inode) and the dtype: a
  changed source gets a new cast. It is written to a temporary name and renamed, so a killed load leaves no
  half file under the final name.
- Where: ``$PE_CAST_CACHE`` (a folder), else ``$XDG_CACHE_HOME/perception_encoder/cast`` (``~/.cache/...``).
  ``PE_CAST_CACHE=off`` turns it off (the weights are then cast in memory, unpacked). Each entry costs
  half the float32 file's size on disk; delete the folder to reclaim it.
- It is used only where it pays: a CPU load to a 16-bit dtype whose memory-mapped weights ``layers.linear``
  packs (bfloat16 on CPUs with bfloat16 support; float16 where oneDNN runs it), from a file holding
  another dtype, with packing on. When the cache cannot be written (read-only, full), the load casts in memory, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..pages import file_mappings, release_file_pages
from .formats import StateDict

CACHE_ENV = "PE_CAST_CACHE"
#: Bumped when what a cached file holds changes, so older entries are never read.
CACHE_VERSION = 1

_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``PE_CAST_CACHE=off``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "no", "false"):
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "perception_encoder" / "cast"


def worth_caching(
    native: Mapping[str, torch.Tensor], dtype: torch.dtype, device: str | torch.device | None
) -> bool:
    """Whether loading ``native`` cast to ``dtype`` on ``device`` should go through the cache: a CPU load to
    a dtype that ``layers.linear`` packs from memory-mapped files, of weights stored in another dtype."""
    from ..layers.linear import packs_mapped_weights

    if dtype not in (torch.bfloat16, torch.float16):
        return False  # the half-precision loads the cache is for (a float32 cast would double the disk)
    if device is not None and torch.device(device).type != "cpu":
        return False
    if cache_dir() is None or not packs_mapped_weights(dtype):
        return False
    return any(t.is_floating_point() and t.dtype != dtype for t in native.values())


def _key(source: Path, dtype: torch.dtype) -> str:
    st = source.stat()
    ident = f"{CACHE_VERSION}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{dtype}"
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _header(native: Mapping[str, torch.Tensor], dtype: torch.dtype, source: Path) -> bytes:
    """The safetensors header of the cast file: every tensor's dtype, shape and byte range, in order."""
    entries: dict[str, object] = {
        "__metadata__": {
            "format": "pt",
            "pe_layout": "native",
            "pe_cast_of": str(source),
            "pe_cast_to": str(dtype),
        }
    }
    offset = 0
    for name, t in native.items():
        out_dtype = dtype if t.is_floating_point() else t.dtype
        size = t.numel() * torch.empty((), dtype=out_dtype).element_size()
        entries[name] = {
            "dtype": _SAFETENSORS_DTYPES[out_dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _write(tmp: str, native: StateDict, dtype: torch.dtype, source: Path) -> None:
    """Stream ``native`` cast to ``dtype`` into a safetensors file, one tensor at a time."""
    mappings = file_mappings(source)
    with open(tmp, "wb") as f:
        f.write(_header(native, dtype, source))
        for name in list(native):
            t = native[name]
            cast = (t.to(dtype) if t.is_floating_point() else t).contiguous()
            if cast.numel():
                f.write(cast.reshape(-1).view(torch.uint8).numpy().data)
            if cast.data_ptr() != t.data_ptr():
                release_file_pages(t, mappings)  # the float32 pages are not needed any more
            del cast


def cached_cast(native: StateDict, dtype: torch.dtype, source: Path) -> Path | None:
    """The path of ``native`` (read from ``source``) cast to ``dtype``, written now if needed; ``None``
    (with a warning) when the cache cannot be written."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{_key(source, dtype)}.safetensors"
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _write(tmp, native, dtype, source))
    except OSError as e:
        warnings.warn(
            f"cannot write the {dtype} cast of {source} to {folder} ({e}); casting in memory instead (slower: "
            f"not packed). Set {CACHE_ENV} to a writable folder, or to 'off'",
            stacklevel=3,
        )
        return None
    return path
