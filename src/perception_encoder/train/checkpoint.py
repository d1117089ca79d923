"""Training checkpoints: everything a killed run needs to continue the same loss curve.

A checkpoint (``<out>/checkpoints/step_XXXXXXX.pt``, plus ``last.pt``) holds the model, optimiser, scheduler
and gradient-scaler states, the RNG states (Python, NumPy, torch CPU and CUDA), the data position (epoch,
index within the epoch), the step, the bad-sample count and the run config. Files are written through a
temporary file and renamed, so a run killed while saving leaves the previous checkpoint intact.

The finished model is exported separately as ``<out>/model.safetensors`` with its config JSON beside it,
which ``perception_encoder.load`` reads like any other checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..configs import config_to_dict
from ..weights.io import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


@dataclass
class Position:
    """Where the run is: optimiser ``step`` done so far, and the data position after the last batch used."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # samples of ``epoch`` already consumed (a multiple of the global batch)
    bad_samples: int = 0


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    numbered files. Returns the numbered file's path."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "model_config": config_to_dict(model.config),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "position": asdict(position),
        "config": run_config,
    }
    path = folder / f"step_{position.step:07d}.pt"
    _atomic_save(state, path)
    _atomic_save(state, folder / LAST)
    numbered = sorted(folder.glob("step_*.pt"))
    for old in numbered[: max(0, len(numbered) - max(1, keep))]:
        old.unlink(missing_ok=True)
    return path


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    """Read a training checkpoint (on CPU). It holds Python objects (RNG states, config), so it is read
    with ``weights_only=False``: resume only from checkpoints you wrote."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read training checkpoint {str(path)!r}: {e}") from e
    missing = {"model", "optimizer", "scheduler", "position"} - set(state)
    if missing:
        raise ValueError(f"{str(path)!r} is not a training checkpoint (missing {', '.join(sorted(missing))})")
    return state


def export_model(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Save the model's weights as safetensors with its config (``<stem>.json`` beside it and in the file's
    metadata), optionally cast to ``dtype`` (e.g. ``torch.float16`` to halve the file)."""
    from ..weights.io import save_safetensors

    sd = model.state_dict()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return save_safetensors(sd, path, model.config)
