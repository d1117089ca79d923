"""Resident pages of memory-mapped tensors: where a file is mapped, and releasing a tensor's pages.

Checkpoints are memory-mapped (``torch.load(mmap=True)``, safetensors): a tensor read from one is backed by
the file, its pages are read on first touch and then count in the process's resident memory for as long as
the mapping lives. Where such a tensor has been converted into another copy (cast to bfloat16 while
loading, or reordered into oneDNN's packed layout, see ``layers.linear``), ``madvise(MADV_DONTNEED)`` drops
its pages from this process, so the two copies never sit in memory together.

That is only safe for pages that still hold the file's bytes: a clean file page reads back from the file
if it is touched again, but a page that was written to (a private copy-on-write page) or swapped out would
come back as the file's old bytes or zeros. ``release_file_pages`` therefore checks every page in
``/proc/self/pagemap`` first and releases nothing if any page was modified or swapped. Linux only;
elsewhere nothing is released.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

import torch

_MADV_DONTNEED = 4  # Linux's value on every architecture
_PRESENT, _SWAPPED, _FILE_OR_SHARED = 1 << 63, 1 << 62, 1 << 61  # /proc/<pid>/pagemap entry bits
_libc: Any = None


def _madvise() -> Callable[[int, int], int] | None:
    """``madvise(addr, n, MADV_DONTNEED)`` from libc (Linux only), or ``None``."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            _libc.madvise.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return None
    return lambda addr, n: _libc.madvise(addr, n, _MADV_DONTNEED)


def file_mappings(path: str | os.PathLike | None = None) -> list[tuple[int, int]]:
    """The ``(start, end)`` address ranges at which this process maps the file ``path``, or any file when
    ``path`` is ``None`` (from ``/proc/self/maps``); empty where there is no ``/proc``."""
    try:
        target = os.path.realpath(path) if path is not None else None
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue  # anonymous memory, [heap], [stack], ...
        name = parts[5].removesuffix(" (deleted)")
        if target is None or name == target:
            start, end = (int(a, 16) for a in parts[0].split("-"))
            out.append((start, end))
    return out


def _unmodified(lo: int, hi: int) -> bool:
    """Whether every page in ``[lo, hi)`` is either not resident (and not swapped) or a file / shared page,
    i.e. releasing them loses nothing. ``False`` when ``/proc/self/pagemap`` cannot be read."""
    page = mmap.PAGESIZE
    first, count = lo // page, (hi - lo) // page
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            data = f.read(count * 8)
    except OSError:
        return False
    if len(data) != count * 8:
        return False
    for entry in struct.unpack(f"<{count}Q", data):
        if entry & _SWAPPED or (entry & _PRESENT and not entry & _FILE_OR_SHARED):
            return False
    return True


def release_file_pages(t: torch.Tensor, mappings: list[tuple[int, int]] | None = None) -> int:
    """Drop the resident pages of the contiguous CPU tensor ``t`` when it lies inside a file mapping
    (one of ``mappings``, by default any file this process maps) and none of its pages was modified.

    Only whole pages inside the tensor's own bytes are released, so a neighbouring tensor that shares a
    page keeps it. The tensor stays valid: its pages read back from the file when touched. Returns the
    number of bytes released (0 when nothing was)."""
    madvise = _madvise()
    if madvise is None or not t.is_contiguous() or not is_file_backed(t, mappings):
        return 0
    ptr, n = t.data_ptr(), t.numel() * t.element_size()
    page = mmap.PAGESIZE
    lo, hi = -(-ptr // page) * page, (ptr + n) // page * page
    if hi <= lo or not _unmodified(lo, hi) or madvise(lo, hi - lo) != 0:
        return 0
    return hi - lo


def is_file_backed(t: torch.Tensor, mappings: list[tuple[int, int]] | None = None) -> bool:
    """Whether the CPU tensor ``t`` lies inside a file mapping (by default, of any file)."""
    if t.device.type != "cpu" or t.layout != torch.strided:
        return False
    if mappings is None:
        mappings = file_mappings()
    ptr, n = t.data_ptr(), t.numel() * t.element_size()
    return any(start <= ptr and ptr + n <= end for start, end in mappings)
