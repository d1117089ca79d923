"""Random-weight checkpoints of a PE-Core model in the reference layout, and the same weights in the
timm and open_clip layouts, so every library loads the same numbers from its own file format.

Files are cached (they take a minute to write for L): ``<cache>/<name>/reference.pt``,
``timm.safetensors`` (vision tower), ``open_clip.safetensors`` and ``reference_bf16.pt`` (the same weights
cast to bfloat16, as ``pe convert --dtype bf16`` writes it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

import perception_encoder as pe
from perception_encoder.factory import create_model
from perception_encoder.weights.files import write_checkpoint
from perception_encoder.weights.formats import from_native

DEFAULT_CACHE = Path(
    os.environ.get("PE_BENCH_CACHE", Path.home() / ".cache" / "perception_encoder" / "bench")
)


@dataclass(frozen=True)
class CheckpointFiles:
    reference: Path
    timm: Path
    open_clip: Path
    reference_bf16: Path

    def for_dtype(self, dtype: str) -> Path:
        """Our file for a dtype name: the bfloat16 one for ``"bf16"``, else the float32 reference."""
        return self.reference_bf16 if dtype == "bf16" else self.reference


def random_model(name: str, seed: int = 0) -> torch.nn.Module:
    """Model ``name`` (float32, eval mode) with random weights, every norm and bias non-trivial as trained
    weights have them (a zero bias or a unit gain would hide a layout mistake)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1 and n.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif p.ndim == 1 and n.endswith("weight"):
                p.normal_(1.0, 0.02)
    return model


def ensure_checkpoints(name: str, cache: Path = DEFAULT_CACHE, *, seed: int = 0) -> CheckpointFiles:
    """Write (once) random float32 weights for ``name`` in the three layouts; return their paths."""
    folder = Path(cache) / name
    files = CheckpointFiles(
        folder / "reference.pt",
        folder / "timm.safetensors",
        folder / "open_clip.safetensors",
        folder / "reference_bf16.pt",
    )
    if all(p.is_file() for p in (files.reference, files.timm, files.open_clip)):
        if not files.reference_bf16.is_file():
            pe.convert(files.reference, files.reference_bf16, to="reference", model=name, dtype="bf16")
        return files
    folder.mkdir(parents=True, exist_ok=True)
    model = random_model(name, seed)
    native = model.state_dict()
    write_checkpoint(from_native(native, "reference"), files.reference, model.config)
    del model, native
    pe.convert(files.reference, files.timm, to="timm", model=name)
    pe.convert(files.reference, files.open_clip, to="open_clip", model=name)
    pe.convert(files.reference, files.reference_bf16, to="reference", model=name, dtype="bf16")
    return files
