"""Checkpoint files: reading tensors and the saved config, writing them back.

- ``read_state_dict``: ``.pt`` / ``.pth`` / ``.bin`` (``torch.load`` with ``weights_only=True``, memory-mapped)
  and ``.safetensors``; bad files raise ``CheckpointError`` naming the file and what is wrong.
- ``write_checkpoint`` / ``save_safetensors``: weights plus the model config (JSON beside the file as
  ``<stem>.json`` and, for safetensors, in the file's metadata), written through a temporary file;
  ``read_config`` reads the config back.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write_all
from ..configs import ModelConfig, config_from_dict, config_to_json
from ..errors import CheckpointError
from ..input_files import file_problem, parse_json, read_text
from .formats import StateDict, unwrap_state_dict

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
# Key of the model config (JSON) in a safetensors file's metadata.
CONFIG_METADATA_KEY = "pe_config"


# --- reading -------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """What a file holds, from its first bytes: ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save or
    plain pickle), ``"safetensors"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` after checking it is an existing, non-empty regular file with a checkpoint
    suffix (a FIFO or a device is refused before it is opened)."""
    p = Path(path)
    problem = file_problem(p)
    if problem == "no such file":
        raise CheckpointError(f"checkpoint file not found: {p}")
    if problem is not None and stat.S_ISDIR(os.stat(p).st_mode):
        raise CheckpointError(f"{p} is a folder; pass the checkpoint file inside it")
    if problem is not None:  # a FIFO or a device would block or never end: never opened
        raise CheckpointError(f"cannot read checkpoint {p}: {problem}")
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{p}: unsupported checkpoint extension {p.suffix or '(none)'!r}; "
            f"expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): an interrupted download or copy?")
    return p


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """The tensors of a checkpoint file, as ``{name: tensor}`` on the CPU, in the file's own layout.

    ``.pt`` / ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True, mmap=True)``: a pickle
    that would run code is refused. ``state_dict`` / ``weights`` / ``model`` wrappers and ``module.``
    prefixes are removed. Missing, empty, truncated or corrupt files, and files whose contents do not
    match their extension, raise ``CheckpointError`` naming the file.
    """
    p = check_checkpoint_path(path)
    kind = _sniff(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        if kind in ("zip", "pickle"):
            raise CheckpointError(f"{p} holds a PyTorch pickle, not safetensors: rename it to .pt")
        obj: Any = _read_safetensors(p)
    else:
        if kind == "safetensors":
            raise CheckpointError(
                f"{p} holds safetensors data, not a PyTorch pickle: rename it to .safetensors"
            )
        if kind == "unknown":
            raise CheckpointError(f"{p} is not a PyTorch checkpoint (unrecognised contents; corrupt?)")
        obj = _read_torch(p, mmap=kind == "zip")
    return unwrap_state_dict(obj, str(p))


def _read_torch(p: Path, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols before refusing
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" in msg.lower() or "weightsunpickler" in msg.lower():
            code = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"[Gg]lobal:? ([\w.]+)", msg)
            what = f" (it refers to {code.group(1)!r})" if code else ""
            raise CheckpointError(
                f"{p} is a pickle that carries code or objects other than tensors{what}; refused: "
                "checkpoints are loaded with weights_only=True. If you trust the file, re-save its "
                "state dict with torch.save(model.state_dict(), path) or as safetensors."
            ) from e
        raise CheckpointError(f"{p} is corrupt (unpickling failed: {msg.splitlines()[0]})") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p} is truncated or corrupt and cannot be read ({reason})") from e


def _read_safetensors(p: Path) -> StateDict:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError does not subclass a common base across versions
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{p} is truncated or corrupt and cannot be read as safetensors ({reason})"
        ) from e


def config_path_for(path: str | os.PathLike) -> Path:
    """Where the config JSON of a checkpoint lives: ``<stem>.json`` beside it."""
    return Path(path).with_suffix(".json")


def _looks_like_config(data: Any) -> bool:
    return isinstance(data, dict) and (
        data.get("type") in ("clip", "vision") or "patch_size" in data or "vision" in data
    )


def read_config(path: str | os.PathLike) -> ModelConfig | None:
    """The model config saved with a checkpoint: ``<stem>.json`` beside it, else the safetensors metadata.

    ``None`` when there is none (JSON beside a checkpoint that is not a model config is ignored); a file
    that cannot be read or parsed as JSON (a FIFO, over 16 MiB, nested too deeply, not JSON), or a config
    that is not valid, raises ``CheckpointError`` naming the file.
    """
    p = Path(path)
    beside = config_path_for(p)
    sources: list[tuple[str, str]] = []
    if os.path.lexists(beside) and beside != p:
        sources.append((str(beside), read_text(beside, "model config", error=CheckpointError)))
    if p.suffix.lower() == SAFETENSORS_SUFFIX and p.is_file() and _sniff(p) == "safetensors":
        meta = _safetensors_metadata(p)
        if CONFIG_METADATA_KEY in meta:
            sources.append((f"{p} (metadata)", meta[CONFIG_METADATA_KEY]))
    for where, text in sources:
        data = parse_json(text, f"{where}: model config", error=CheckpointError)
        if not _looks_like_config(data):
            continue  # another tool's JSON
        try:
            return config_from_dict(data)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{where}: not a valid model config ({e})") from e
    return None


def _safetensors_metadata(p: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


# --- writing -------------------------------------------------------------------------------------------


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Detached, contiguous CPU tensors, none sharing storage (safetensors refuses shared tensors)."""
    out: StateDict = {}
    seen: set[tuple[int, int]] = set()
    for k, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a bigger buffer, or a buffer another tensor uses
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[k] = t
    return out


def write_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: ModelConfig | None = None,
    *,
    layout: str | None = None,
) -> Path:
    """Write ``state_dict`` as-is to ``path``: safetensors for ``.safetensors``, ``torch.save`` for
    ``.pt`` / ``.pth`` / ``.bin``. With a ``config``, ``<stem>.json`` is written beside it (and into the
    safetensors metadata). ``layout`` (a format name) is recorded in the safetensors metadata.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{p}: unsupported extension {suffix or '(none)'!r}; use {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    tensors = _plain_tensors(state_dict)
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        meta = {"format": "pt"}
        if layout:
            meta["pe_layout"] = layout
        if config is not None:
            meta[CONFIG_METADATA_KEY] = config_to_json(config)
        items: list[tuple[Path, Callable[[str], None]]] = [
            (p, lambda tmp: save_file(tensors, tmp, metadata=meta))
        ]
    else:
        items = [(p, lambda tmp: torch.save(tensors, tmp))]
    if config is not None:
        text = config_to_json(config) + "\n"
        items.append((config_path_for(p), lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    atomic_write_all(items)  # the weights and their config are replaced together
    return p


def save_safetensors(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: ModelConfig | None = None,
) -> Path:
    """Save a model (or a state dict) as ``path`` (``.safetensors``) with its config as ``<stem>.json``
    beside it and in the file's metadata. A model's own ``config`` is used when ``config`` is ``None``."""
    p = Path(path)
    if p.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{p}: a safetensors file must end with .safetensors")
    if isinstance(model_or_state_dict, nn.Module):
        config = config if config is not None else getattr(model_or_state_dict, "config", None)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = dict(model_or_state_dict)
    return write_checkpoint(state_dict, p, config, layout="native")
