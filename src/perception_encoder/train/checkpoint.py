"""Training checkpoints: everything a killed run needs to continue the same loss curve.

A checkpoint (``<out>/checkpoints/step_XXXXXXX.pt``, plus ``last.pt``) is a ``torch.save`` file of one
dict: a format marker (``"format": "perception_encoder.training_state"``, ``"version": 1``), the model,
optimiser, scheduler and gradient-scaler states, the RNG states (Python, NumPy, torch CPU and CUDA), the
data position (epoch, index within the epoch), the step, the bad-sample count and the run config.

Everything in it is a tensor or a plain value (dict, list, tuple, str, int, float, bool, None): saving
checks this, and reading uses ``torch.load(weights_only=True)``, so a planted file whose pickle carries
code is refused instead of run. A file that is not a torch file, carries other objects, or lacks the marker
and keys raises ``CheckpointError`` (a ``ValueError``) with a one-line message naming the file.

Files are written through a temporary file and renamed, so a run killed while saving leaves the previous
checkpoint intact; the temporary files such a kill leaves behind are removed by the next run
(``remove_stale_temp_files``).

The finished model is exported separately as ``<out>/model.safetensors`` with its config JSON beside it,
which ``perception_encoder.load`` reads like any other checkpoint.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write, remove_stale_temps
from ..configs import config_to_dict
from ..errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT = "perception_encoder.training_state"
VERSION = 1
_KEYS = ("model", "model_config", "optimizer", "scheduler", "scaler", "rng", "position", "config")
# The checkpoint names whose temporary files a killed save leaves behind (atomic.remove_stale_temps)
_OUR_NAMES = r"last\.pt|step_\d{7,}\.pt"


@dataclass
class Position:
    """Where the run is: optimiser ``step`` done so far, and the data position after the last batch used."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # samples of ``epoch`` already consumed (a multiple of the global batch)
    bad_samples: int = 0


# --- RNG states -------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU, and CUDA when available) RNG states, as tensors and plain values
    (NumPy's key array becomes an int64 tensor, so the checkpoint needs no NumPy objects)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, None): plain already
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states ``rng_state`` returned (CUDA's only when CUDA is available)."""
    random.setstate(state["python"])
    n = state["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    np.random.set_state((n["bit_generator"], key, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving -----------------------------------------------------------------------------------------------


def save_training_state(
    out_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    position: Position,
    run_config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``step_<step>.pt`` and ``last.pt`` under ``out_dir/checkpoints``; keep the newest ``keep``
    numbered files. Returns the numbered file's path. Raises ``TypeError`` (before writing anything) when
    a state holds something other than tensors and plain values, which resuming would refuse."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "model_config": config_to_dict(model.config),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "position": asdict(position),
        "config": run_config,
    }
    check_plain(state)
    path = folder / f"step_{position.step:07d}.pt"
    _atomic_save(state, path)
    _atomic_save(state, folder / LAST)
    numbered = sorted(folder.glob("step_*.pt"))
    for old in numbered[: max(0, len(numbered) - max(1, keep))]:
        old.unlink(missing_ok=True)
    return path


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first entry of ``obj`` that is not a tensor or a plain value
    (dict/OrderedDict with str or int keys, list, tuple, str, int, float, bool, None): the only things a
    ``weights_only`` load accepts without an allow-list."""
    # exact types: subclasses such as numpy.float64 (a float) or an IntEnum pickle as their own class
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: a training checkpoint holds only "
        "tensors and plain values"
    )


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def remove_stale_temp_files(out_dir: str | Path) -> int:
    """Delete the temporary checkpoint files a run killed while saving left in ``<out_dir>/checkpoints``.

    Only names of ``atomic_write``'s pattern for our own files are touched (``.last.pt.<8 chars>.tmp``,
    ``.step_XXXXXXX.pt.<8 chars>.tmp``); returns how many were removed (0 when there is no folder).
    """
    return remove_stale_temps(Path(out_dir) / CHECKPOINT_DIR, _OUR_NAMES)


# --- reading ----------------------------------------------------------------------------------------------


def find_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``resume`` itself, or ``<out>/checkpoints/last.pt`` for ``"auto"``
    (``None`` when there is none yet, so ``--resume auto`` also starts fresh runs)."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(out_dir) / CHECKPOINT_DIR / LAST
        return last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST if (path / CHECKPOINT_DIR).is_dir() else path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {resume!r} does not exist")
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by ``save_training_state`` (tensors on CPU).

    Read with ``torch.load(weights_only=True)``: nothing in the file is run. Raises ``CheckpointError``
    naming the file when it is not a torch file, its pickle carries code or objects, or it is a dict
    without our format marker and keys.
    """
    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {name} does not exist")
    # torch.save writes zip archives; anything else (an empty or cut file, a raw pickle) is not ours
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{name} is not a PyTorch checkpoint file (empty, truncated or another format)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols before refusing
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        named = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"training checkpoint {name} is refused: its pickle carries code or Python objects{named}, which training "
            f"checkpoints of pe train (format version {VERSION}) never hold"
        ) from None
    except Exception as e:  # corrupt archives raise RuntimeError, KeyError, EOFError ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"training checkpoint {name} cannot be read: {reason}") from None
    _check_layout(state, name)
    return state


def _check_layout(state: Any, name: str) -> None:
    """Raise ``CheckpointError`` unless ``state`` (read from file ``name``) is a dict with our marker, version
    and keys."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not a training checkpoint of pe train (no {FORMAT!r} marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"training checkpoint {name} has format version {state.get('version')!r}; this version reads {VERSION}"
        )
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise CheckpointError(f"training checkpoint {name} is incomplete (missing {', '.join(missing)})")
    position = state["position"]
    expected = {f.name for f in fields(Position)}
    if not isinstance(position, dict) or set(position) != expected:
        raise CheckpointError(
            f"training checkpoint {name} has a malformed position (expected keys {', '.join(sorted(expected))})"
        )


def export_model(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save the model's weights as safetensors with its config (``<stem>.json`` beside it and in the file's
    metadata), optionally cast to ``dtype`` (e.g. ``torch.float16`` to halve the file)."""
    from ..weights.files import save_safetensors

    sd = model.state_dict()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return save_safetensors(sd, path, model.config)
